"""Estimate each strategy's GPU memory for distilling Stable Diffusion 1.5 and SDXL, without their weights or a GPU.

    python eval/memory.py --out benchmarks/memory

The UNets are built from the published SD 1.5 / SDXL UNet configs on PyTorch's meta device (shapes only, no
memory), so parameter counts are exact; activation memory is what autograd saves for backward during one forward
of one sample, counted with ``torch.autograd.graph.saved_tensors_hooks`` (bf16 activations; a fused SDPA attention
kernel, so no attention matrices; no gradient checkpointing). Per strategy and GPU:

* a frozen network costs its bf16 weights (2 bytes a parameter);
* a trained network costs fp32 weights, gradients and AdamW's two moments (16 bytes a parameter; 10 with
  ``--optimizer adamw8bit``, whose moments take a byte each); a LoRA adapter the same per adapter parameter, on a
  frozen bf16 base it shares with the teacher;
* activations: the passes that keep a graph in the heaviest step, times the batch (passes without gradient, such as
  the teacher's, keep none);
* text encoders and VAE: not counted (prompt embeddings and latents are computed once and cached, and the frozen
  parts can then be offloaded); their bf16 size is listed separately.

This is an estimate: it leaves out the CUDA context (~0.5 GiB), allocator fragmentation and temporary buffers.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

GIB = 2**30

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# frozen parts in bf16 (parameter counts of CLIP ViT-L/14 text, OpenCLIP ViT-bigG/14 text and the SD VAE)
FROZEN_PARTS = {"sd15": 123.1e6 + 83.7e6, "sdxl": 123.1e6 + 694.7e6 + 83.7e6}
MODELS = {"sd15": (SD15_UNET, 77), "sdxl": (SDXL_UNET, 77)}

# per strategy: trained full networks, trained LoRA adapters, extra fp32 copies (LCM's EMA target) and the passes that
# keep a graph, per sample, in its heaviest step.
# PD/CD: one student pass with grad. DMD2 with the GAN term: the generator step keeps the generator's pass and the
# GAN term's fake-score pass (gradient to its input); the fake-score step runs one pass on 2B (generated + real).
# SiD: the generator's pass plus the teacher's and the fake score's (gradient through their inputs).
STRATEGIES = {
    "progressive": {"full": 1, "lora": 0, "copies": 0, "passes": 1},
    "consistency (LCM, full)": {"full": 1, "lora": 0, "copies": 1, "passes": 1},
    "LCM-LoRA (rank 64)": {"full": 0, "lora": 1, "copies": 0, "passes": 1},
    "DMD2 (GAN)": {"full": 2, "lora": 0, "copies": 0, "passes": 2},
    "DMD2, LoRA 64 (both)": {"full": 0, "lora": 2, "copies": 0, "passes": 2},
    "SiD": {"full": 2, "lora": 0, "copies": 0, "passes": 3},
}


def measure(config: dict, text_tokens: int, lora_rank: int = 64) -> dict:
    """Parameter count, LoRA-adapter parameter count and saved-activation bytes per sample (bf16) of a UNet."""
    from diffusers import UNet2DConditionModel

    from stepdistill.lora import add_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config).to(torch.bfloat16)
    params = sum(p.numel() for p in unet.parameters())
    b, saved = 3, [0]

    def pack(t):
        if t.dim() and t.shape[0] == b:  # activations carry the batch; weights saved for backward do not
            saved[0] += t.numel() * t.element_size()
        return t

    size = config["sample_size"]
    x = torch.randn(b, 4, size, size, device="meta", dtype=torch.bfloat16)
    kwargs = {"encoder_hidden_states": torch.randn(b, text_tokens, config["cross_attention_dim"], device="meta")}
    if config.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(b, 1280, device="meta"),
            "time_ids": torch.randn(b, 6, device="meta"),
        }
    kwargs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    if "added_cond_kwargs" in kwargs:
        kwargs["added_cond_kwargs"] = {k: v.to(torch.bfloat16) for k, v in kwargs["added_cond_kwargs"].items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(x, torch.full((b,), 500.0, device="meta"), **kwargs)
    add_lora(unet, lora_rank)
    adapter = sum(p.numel() for n, p in unet.named_parameters() if "lora" in n)
    return {"params": params, "lora_params": adapter, "activation_bytes_per_sample": saved[0] / b}


TRAINED_BYTES = {"adamw": 16, "adamw8bit": 10}  # fp32 weights + gradients + two moments (fp32, or 8-bit)


def estimate(m: dict, s: dict, batch: int, optimizer: str = "adamw") -> float:
    """GiB per GPU for strategy ``s`` on a UNet measured as ``m`` at a per-GPU ``batch``."""
    weights = 2 * m["params"]  # the frozen teacher (for LoRA also the adapters' base) in bf16
    trained = (
        TRAINED_BYTES[optimizer] * (s["full"] * m["params"] + s["lora"] * m["lora_params"])
        + 4 * s["copies"] * m["params"]
    )
    activations = s["passes"] * batch * m["activation_bytes_per_sample"]
    return (weights + trained + activations) / GIB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="per-GPU batch sizes to tabulate")
    parser.add_argument("--out", default="benchmarks/memory", help="folder for results.json and table.md")
    parser.add_argument(
        "--optimizer", choices=sorted(TRAINED_BYTES), default="adamw", help="the train scripts' --optimizer"
    )
    args = parser.parse_args(argv)
    measured = {name: measure(config, tokens) for name, (config, tokens) in MODELS.items()}
    rows = []
    for name, s in STRATEGIES.items():
        for model, m in measured.items():
            row = {
                "strategy": name,
                "model": model,
                **{f"batch_{b}": round(estimate(m, s, b, args.optimizer), 1) for b in args.batch},
            }
            rows.append(row)
    lines = [
        "| strategy | model | " + " | ".join(f"GiB/GPU, batch {b}" for b in args.batch) + " |",
        "|---|---|" + "---:|" * len(args.batch),
    ]
    lines += [
        f"| {r['strategy']} | {r['model']} | " + " | ".join(str(r[f"batch_{b}"]) for b in args.batch) + " |"
        for r in rows
    ]
    table = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    summary = {
        model: {
            "unet_params": m["params"],
            "lora64_params": m["lora_params"],
            "activation_gib_per_sample_bf16": round(m["activation_bytes_per_sample"] / GIB, 3),
            "frozen_text_encoders_and_vae_gib_bf16": round(2 * FROZEN_PARTS[model] / GIB, 2),
        }
        for model, m in measured.items()
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        record = {
            "kind": "estimate (see eval/memory.py)",
            "optimizer": args.optimizer,
            "models": summary,
            "rows": rows,
        }
        json.dump(record, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(json.dumps(summary, indent=2))
    print(table)


if __name__ == "__main__":
    main()
