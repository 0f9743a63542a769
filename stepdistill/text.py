"""Latent text-to-image teachers: Stable Diffusion 1.x/2.x, SDXL and SD3 pipelines, loaded with diffusers.

A text-to-image teacher is three frozen parts around the network the strategies distil (a UNet, or SD3's
rectified-flow transformer): the prompt encoder (one CLIP text encoder for SD 1.x/2.x; two for SDXL, whose
penultimate hidden states are concatenated and whose second gives the pooled embedding; two CLIP encoders and an
optional T5 for SD3), the VAE that maps images to the latents the network denoises, and the pipeline class users
sample with. This module loads them from a pipeline folder or a Hub id (``load_text_to_image``), turns captioned
image folders and prompt lists into training batches of latents and prompt embeddings (computed once, optionally
cached on disk), and builds the offline CLIP tokenizer that locally made test and demo pipelines use.

The prompt embeddings are exactly those of diffusers' ``encode_prompt`` (``clip_skip`` unset), and the empty prompt
(the unconditional branch of classifier-free guidance) is encoded the same way, or zeros for an SDXL pipeline with
``force_zeros_for_empty_prompt``, so that the toolkit's guided teacher equals the pipeline's.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .denoiser import Condition, Denoiser
from .hf_datasets import DatasetImages, DatasetItem
from .io import atomic_torch_save, check_model_path, hub_errors, read_jsonl
from .streams import index_shards, shard_files, shard_member

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}
TEXT_PIPELINES = tuple(FAMILIES)
CAPTION_KEYS = ("text", "caption", "prompt")


def pipeline_class(path: str, **hub_kwargs) -> str | None:
    """The ``_class_name`` in ``path``'s ``model_index.json`` (a local folder or a Hub id), or ``None`` for a folder
    without one (a bare UNet + scheduler, the toolkit's own teachers) and for a name that is neither."""
    if os.path.isdir(path):
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            return None
        with open(index) as f:
            name = json.load(f).get("_class_name")
    elif path.startswith((".", "/")) or path.count("/") != 1:
        return None  # neither a folder nor a Hub id 'owner/name'
    else:
        import diffusers

        check_model_path(path)  # 'owner/name' close to a local folder's name: a typo, refused before any Hub request

        with hub_errors(path):
            name = diffusers.DiffusionPipeline.load_config(path, **hub_kwargs).get("_class_name")
    return name if isinstance(name, str) else None


def absent_components(path: str, **hub_kwargs) -> dict[str, None]:
    """The components a pipeline leaves out (``[null, null]`` in its ``model_index.json``: SD3 without its T5
    encoder), as ``None`` keyword arguments for ``DiffusionPipeline.from_pretrained``, which refuses the folder
    without them."""
    import diffusers

    index = diffusers.DiffusionPipeline.load_config(path, **hub_kwargs)
    return {k: None for k, v in index.items() if v == [None, None]}


def is_text_to_image(path: str, **hub_kwargs) -> bool:
    """Whether ``path`` is a Stable Diffusion (1.x/2.x), SDXL, SD3 or FLUX.1 pipeline."""
    return pipeline_class(path, **hub_kwargs) in TEXT_PIPELINES


class PromptEncoder(nn.Module):
    """Frozen tokenizers and text encoders: prompts -> ``Condition(text=, pooled=, time_ids=)``, as diffusers'
    ``encode_prompt`` of each family computes them (``clip_skip`` unset).

    Args:
        family: ``"sd"`` (one CLIP encoder's last hidden states), ``"sdxl"`` (two CLIP encoders' penultimate hidden
            states concatenated, the second's pooled projection, and ``time_ids``) or ``"sd3"`` (two CLIP encoders'
            penultimate hidden states concatenated and zero-padded to the T5 width, followed by the T5 encoder's
            256 token embeddings, or zeros without a T5 encoder; both CLIP pooled projections concatenated) or
            ``"flux"`` (the T5 encoder's 512 token embeddings, and the CLIP encoder's pooled output).
        tokenizers, encoders: the family's tokenizers and text encoders, in the pipeline's order (SD3's third, the
            T5 encoder, may be left out: ``t5_width`` then gives the width of its zero embeddings).
        zero_null: the empty prompt's embeddings are zeros (SDXL's ``force_zeros_for_empty_prompt``).
        image_size: pixel size of the generated images, SDXL's ``time_ids = (H, W, 0, 0, H, W)``.
        t5_width: SD3: the transformer's ``joint_attention_dim``.
    """

    T5_TOKENS = 256  # diffusers' SD3 default max_sequence_length
    FLUX_T5_TOKENS = 512  # FluxPipeline's default max_sequence_length

    def __init__(
        self,
        family: str,
        tokenizers: list,
        encoders: list[nn.Module],
        zero_null: bool = False,
        image_size: int = 0,
        t5_width: int = 0,
    ):
        super().__init__()
        if family not in FAMILIES.values():
            raise ValueError(f"Unknown text-to-image family {family!r}: expected one of {tuple(FAMILIES.values())}.")
        self.family, self.tokenizers, self.encoders = family, tokenizers, nn.ModuleList(encoders)
        self.zero_null, self.image_size, self.t5_width = zero_null, image_size, t5_width
        self.requires_grad_(False).eval()

    def _ids(self, tokenizer, prompts: list[str], max_length: int) -> Tensor:
        device = next(self.encoders.parameters()).device
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return tokens.input_ids.to(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Condition:
        """The condition of each prompt: ``text [B, L, D]`` (+ ``pooled [B, D']``, and ``time_ids [B, 6]`` for
        SDXL)."""
        prompts = list(prompts)
        if self.family == "sd":
            tokenizer, encoder = self.tokenizers[0], self.encoders[0]
            # CLIP's causal attention only, as diffusers does (the encoder's use_attention_mask is unset)
            return Condition(text=encoder(self._ids(tokenizer, prompts, tokenizer.model_max_length))[0].float())
        if self.family == "flux":  # FluxPipeline.encode_prompt: CLIP's pooled output, T5's token embeddings
            clip_tokenizer, t5_tokenizer = self.tokenizers
            pooled = self.encoders[0](
                self._ids(clip_tokenizer, prompts, clip_tokenizer.model_max_length)
            ).pooler_output
            text = self.encoders[1](self._ids(t5_tokenizer, prompts, self.FLUX_T5_TOKENS))[0]
            return Condition(text=text.float(), pooled=pooled.float())
        hidden, pooled = [], []
        for tokenizer, encoder in list(zip(self.tokenizers, self.encoders))[:2]:  # the CLIP encoders
            out = encoder(self._ids(tokenizer, prompts, tokenizer.model_max_length), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: its pooled projection
                pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        text = torch.cat(hidden, dim=-1).float()
        if self.family == "sdxl":
            if len(pooled) != 1:
                raise ValueError("An SDXL pipeline needs a CLIPTextModel and a CLIPTextModelWithProjection.")
            size = self.image_size
            time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=text.device)
            return Condition(text=text, pooled=pooled[0].float(), time_ids=time_ids.expand(len(prompts), -1))
        if len(self.encoders) > 2:  # SD3's T5
            t5 = self.encoders[2](self._ids(self.tokenizers[2], prompts, self.T5_TOKENS))[0].float()
        else:
            t5 = text.new_zeros(len(prompts), self.T5_TOKENS, self.t5_width)
        text = nn.functional.pad(text, (0, t5.shape[-1] - text.shape[-1]))
        return Condition(text=torch.cat([text, t5], dim=-2), pooled=torch.cat(pooled, dim=-1).float())

    def null(self) -> Condition:
        """The empty prompt's condition (``[1, ...]``): the unconditional branch of classifier-free guidance."""
        cond = self.encode([""])
        if self.zero_null:
            cond.text, cond.pooled = torch.zeros_like(cond.text), torch.zeros_like(cond.pooled)
        return cond


class LatentCodec(nn.Module):
    """The frozen VAE: images in [-1, 1] <-> the latents the UNet denoises (``scaling_factor``, ``shift_factor``)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> latents ``[B, C, H/f, W/f]`` (the posterior mean, so that caches repeat)."""
        dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(images.to(dtype)).latent_dist.mode()
        return ((latents.float() - self.shift) * self.scaling).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images ``[B, 3, H, W]`` in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.scaling + self.shift).to(dtype)).sample
        return images.float().clamp(-1, 1)


@dataclass
class TextToImage:
    """A loaded text-to-image teacher: the denoiser (with the empty prompt as its null condition), its prompt
    encoder and VAE, and where it came from (what exports copy)."""

    teacher: Denoiser
    prompts: PromptEncoder
    codec: LatentCodec
    source: str
    pipeline_class: str

    @property
    def image_size(self) -> int:
        return self.teacher.sample_shape[-1] * self.codec.scale_factor


def load_text_to_image(
    path: str, revision: str | None = None, variant: str | None = None, dtype: torch.dtype | None = None
) -> TextToImage:
    """Load an SD 1.x/2.x, SDXL, SD3 or FLUX.1 pipeline (local folder or Hub id) as a teacher with its frozen parts.

    Raises:
        ValueError: if ``path`` is another kind of pipeline.
        FileNotFoundError: for a Hub id that cannot be reached (with the advice to pass a local folder).
    """
    import diffusers
    import transformers

    hub = {k: v for k, v in {"revision": revision, "variant": variant}.items() if v is not None}
    name = pipeline_class(path, **hub)
    if name not in FAMILIES:
        raise ValueError(f"{path!r} is a {name or 'folder without model_index.json'}, not one of {TEXT_PIPELINES}.")
    family = FAMILIES[name]
    with hub_errors(path):
        index = diffusers.DiffusionPipeline.load_config(path, **hub)
        backbone = "transformer" if family in ("sd3", "flux") else "unet"
        teacher = Denoiser.from_pretrained(path, subfolder=backbone, dtype=dtype, **hub)
        vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **hub)
        parts = {"sd": [""], "sdxl": ["", "_2"], "sd3": ["", "_2", "_3"], "flux": ["", "_2"]}[family]
        parts = [p for p in parts if (index.get(f"text_encoder{p}") or [None])[0] is not None]  # SD3 without T5
        rev = {"revision": revision} if revision else {}
        tokenizers, encoders = [], []
        for p in parts:
            tokenizer_cls = getattr(transformers, index[f"tokenizer{p}"][1])
            tokenizers.append(tokenizer_cls.from_pretrained(path, subfolder=f"tokenizer{p}", **rev))
            cls = getattr(transformers, index[f"text_encoder{p}"][1])
            encoders.append(cls.from_pretrained(path, subfolder=f"text_encoder{p}", dtype=dtype, **hub))
    codec = LatentCodec(vae)
    config = teacher.backbone.config
    zero_null = family == "sdxl" and index.get("force_zeros_for_empty_prompt", True)
    t5_width = getattr(config, "joint_attention_dim", 0) or 0
    image_size = teacher.sample_shape[-1] * codec.scale_factor
    prompts = PromptEncoder(family, tokenizers, encoders, zero_null, image_size, t5_width)
    null = prompts.null()
    teacher.null_text, teacher.null_pooled = null.text, null.pooled
    return TextToImage(teacher.frozen(), prompts, codec, path, name)


# ---------------------------------------------------------------------------------------------------- data
def _read_jsonl(path: str) -> list[dict]:
    """The objects of a JSON-lines file; a line that is not a JSON object is an error naming its line."""
    rows = []
    for number, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise ValueError(f'{path}:{number} is {type(row).__name__}, not an object like {{"file_name": ...}}.')
        rows.append(row)
    return rows


def read_captions(folder: str | DatasetImages) -> list[tuple[str | tuple | DatasetItem, str]]:
    """``(image, caption)`` pairs of an image folder in diffusers' imagefolder layout: ``metadata.jsonl`` (one
    ``{"file_name": ..., "text": ...}`` per line) or ``metadata.csv`` with ``file_name`` and a ``text``, ``caption``
    or ``prompt`` column; or of a folder of webdataset-style ``.tar`` shards (``KEY.png`` + ``KEY.txt``). The image
    is a path, or a shard member (``streams.index_shards``); for a ``--dataset`` (``hf_datasets.DatasetImages``),
    a ``DatasetItem`` and its row's caption."""
    if isinstance(folder, DatasetImages):
        if folder.captions is None:
            raise ValueError(
                f"Dataset {folder.name!r} has no caption column (text, caption or prompt): a text-to-image teacher "
                "trains on captioned images; name the column with --caption-column (columns: "
                f"{folder.data.column_names})."
            )
        return [(folder.item(i), caption) for i, caption in enumerate(folder.captions)]
    jsonl, table = os.path.join(folder, "metadata.jsonl"), os.path.join(folder, "metadata.csv")
    if os.path.isfile(jsonl):
        rows, where = _read_jsonl(jsonl), jsonl
    elif os.path.isfile(table):
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        where = table
    elif shard_files(folder):  # webdataset-style shards: KEY.png + KEY.txt
        samples = index_shards(shard_files(folder), ("txt",))
        missing = [item[3] for item, texts in samples if "txt" not in texts]
        if missing:
            raise ValueError(
                f"{len(missing)} images in the shards of {folder!r} have no KEY.txt caption: {missing[0]!r}."
            )
        return [(item, texts["txt"]) for item, texts in samples]
    else:
        raise FileNotFoundError(
            f"{folder!r} has no metadata.jsonl, metadata.csv or .tar shards: a text-to-image teacher trains on "
            'captioned images (one {"file_name": "x.png", "text": "a caption"} per line of metadata.jsonl, or '
            "KEY.png + KEY.txt members of webdataset-style shards)."
        )
    pairs = []
    for i, row in enumerate(rows):
        key = next((k for k in CAPTION_KEYS if k in row), None)
        if "file_name" not in row or key is None:
            raise ValueError(
                f"{where}: row {i + 1} needs 'file_name' and one of {CAPTION_KEYS}; it has {sorted(row)}."
            )
        path = os.path.join(folder, row["file_name"])
        if os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) != os.path.realpath(folder):
            raise ValueError(
                f"{where}: row {i + 1} names {row['file_name']!r}, which is outside {folder!r}; file_name must be a "
                "path inside the data folder."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: row {i + 1} names {row['file_name']!r}, which is not in {folder!r}.")
        pairs.append((path, str(row[key])))
    if not pairs:
        raise ValueError(f"{where} lists no images.")
    return pairs


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file (one per line), a CSV (column caption/prompt/text) or a JSON file
    (a list of strings, or COCO-style ``{"annotations": [{"caption": ...}]}``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Prompt file {path!r} does not exist.")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "annotations" in data:
            prompts = [a["caption"] for a in data["annotations"]]
        elif isinstance(data, list) and all(isinstance(p, str) for p in data):
            prompts = data
        else:
            raise ValueError(f"{path!r}: expected a list of strings or COCO-style annotations with captions.")
    elif path.endswith(".csv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("caption", "prompt", "text") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(f"{path!r}: no 'caption', 'prompt' or 'text' column in {reader.fieldnames}.")
            prompts = [row[column] for row in reader]
    else:
        with open(path) as f:
            prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"Prompt file {path!r} holds no prompts.")
    return prompts


def read_prompt_labels(path: str | os.PathLike) -> Tensor | None:
    """The class of each prompt of a CSV prompt file with a ``label`` column (class accuracy of text-to-image samples
    with a domain classifier), else ``None``."""
    path = os.fspath(path)
    if not path.endswith(".csv"):
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "label" not in (reader.fieldnames or []):
            return None
        values = [row["label"].strip() for row in reader]
    bad = next((v for v in values if not v.lstrip("-").isdigit()), None)
    if bad is not None:
        raise ValueError(f"{path!r}: label {bad!r} is not an integer class id.")
    return torch.tensor([int(v) for v in values])


def _source_name(source) -> str:
    """An image of ``read_captions`` (a path, a shard member or a dataset row) as messages name it."""
    if isinstance(source, str):
        return source
    return source.name if isinstance(source, DatasetItem) else f"{source[0]}:{source[3]}"


def _source_version(source):
    """What changes when an image of ``read_captions`` does: its file's mtime, or its dataset's fingerprint."""
    if isinstance(source, DatasetItem):
        return source.images.fingerprint
    return os.path.getmtime(source if isinstance(source, str) else source[0])


def _open_image(source):
    if isinstance(source, DatasetItem):
        return source.images.pil(source.index)
    from PIL import Image

    return Image.open(shard_member(source) if isinstance(source, tuple) else source)


def _load_rgb(source, size: int, channels: int) -> Tensor:
    """One image (a path, a shard member or a dataset row) resized (shorter side, bicubic) and centre-cropped to
    ``size``, in [-1, 1], ``[C, size, size]``."""
    import numpy as np
    from PIL import Image

    name = _source_name(source)
    try:
        with _open_image(source) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            scale = size / min(im.size)
            im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
            array = np.asarray(im, dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: truncated or not an image
        raise ValueError(f"Cannot read the image {name!r} ({err}): replace it or remove its caption row.") from None
    x = torch.from_numpy(array.copy())
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x / 127.5 - 1.0


def _encode_conditions(model: TextToImage, prompts: list[str], batch: int) -> dict[str, Tensor]:
    """The batch entries ``text`` (+ ``pooled``, ``time_ids``) of ``prompts``, encoded ``batch`` at a time."""
    conds = [model.prompts.encode(prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
    fields = ("text", "pooled", "time_ids")
    return {k: torch.cat([getattr(c, k) for c in conds]).cpu() for k in fields if getattr(conds[0], k) is not None}


def _cached(cache_dir: str | None, key: dict, build) -> dict[str, Tensor]:
    """``build()``'s tensors, kept in ``cache_dir/<hash of key>.pt`` and reused when the key repeats."""
    if not cache_dir:
        return build()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{digest}.pt")
    if os.path.isfile(path):
        try:  # tensors only: a pickled object is refused, never run
            return torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # cut off or damaged: made anew
            warnings.warn(f"The cache file {path!r} is unreadable ({err}); encoding the data again.", stacklevel=2)
    data = build()
    atomic_torch_save(data, path)
    return data


def encode_captioned_folder(
    model: TextToImage, folder: str, limit: int | None = None, cache_dir: str | None = None, batch: int = 32
) -> dict[str, Tensor]:
    """Training batches of a captioned image folder: ``{"x0": latents, "text": ..., (+ "pooled", "time_ids")}``, each
    image encoded once by the VAE and each caption by the text encoders (cached in ``cache_dir`` if given)."""
    pairs = read_captions(folder)[:limit]
    size, channels = model.image_size, model.codec.vae.config.in_channels
    stats = [(_source_name(p), c, _source_version(p)) for p, c in pairs]
    key = {"kind": "captioned", "teacher": model.source, "size": size, "items": stats}

    def build():
        latents = []
        for i in range(0, len(pairs), batch):
            images = torch.stack([_load_rgb(p, size, channels) for p, _ in pairs[i : i + batch]])
            latents.append(model.codec.encode(images.to(next(model.codec.parameters()).device)).cpu())
        return {"x0": torch.cat(latents), **_encode_conditions(model, [c for _, c in pairs], batch)}

    return _cached(cache_dir, key, build)


def encode_prompt_set(
    model: TextToImage, path: str, cache_dir: str | None = None, batch: int = 32
) -> dict[str, Tensor]:
    """Conditions of a prompt-only set (data-free strategies): ``{"text": ..., (+ "pooled", "time_ids")}``."""
    prompts = read_prompts(path)
    key = {"kind": "prompts", "teacher": model.source, "prompts": prompts}
    return _cached(cache_dir, key, lambda: _encode_conditions(model, prompts, batch))


# -------------------------------------------------------------------------------------------- tokenizer
def write_clip_tokenizer(folder: str, max_merges: int | None = None, model_max_length: int = 77) -> str:
    """Write a ``CLIPTokenizer`` folder made offline from the BPE merges that open_clip ships
    (``bpe_simple_vocab_16e6.txt.gz``): CLIP's byte-level vocabulary, the first ``max_merges`` merges (all 48,894
    by default: the 49,408-token vocabulary of SD's tokenizer) and its start/end tokens.

    Returns:
        the folder, loadable with ``transformers.CLIPTokenizer.from_pretrained``.
    """
    import open_clip
    from transformers import CLIPTokenizer

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # CLIP's own cut: 48,894 merges after the header line
    merges = merges[:max_merges] if max_merges is not None else merges
    byte_tokens = _byte_symbols()
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=[tuple(m.split()) for m in merges],
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(folder)
    return folder


def _byte_symbols() -> list[str]:
    """CLIP's (and GPT-2's) byte-level BPE alphabet in its vocabulary order: the printable Latin-1 bytes stand for
    themselves, in byte order, and the other bytes follow as code points 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
