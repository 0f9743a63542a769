import os

# Nothing in the test suite may reach the network: the Hub's offline switch is set before diffusers or
# huggingface_hub are imported (subprocesses the tests start inherit it).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# one thread per pytest-xdist worker (the workers share the cores), two in a plain `pytest` run
DEFAULT_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("STEPDISTILL_TEST_THREADS", DEFAULT_THREADS)))
if os.environ.get("PYTEST_XDIST_WORKER"):  # and the processes a worker starts: one thread each, not one per core
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# pytest-xdist scheduling (`make test` runs `-n 2`). Tests that share an expensive module fixture run on one worker,
# so that the fixture is built once: xdist's own `xdist_group` mark does not group under pytest 9 (xdist 3.8 renames
# `item._nodeid`, which pytest 9 no longer reads). Every other test is its own unit of work, handed to whichever worker
# is free, and the longest tests are collected first, so that no worker is left alone with one of them at the end.
SHARED_FIXTURE_GROUPS = (
    "tests/test_strategies.py::test_every_strategy_trains_on_two_processes",  # one torchrun launch for all cases
    "tests/test_golden_exports.py::",  # every golden export computed at once
    "tests/test_students.py::",  # the teacher's own score at each step count computed once
)
LONGEST_FIRST = (
    "tests/test_evaluation.py::test_inception_fid_on_the_real_network",
    "tests/test_evaluation.py::test_gan_probe_sees_a_real_difference_and_no_false_one",
    "tests/test_strategies.py::test_every_strategy_trains_on_two_processes",
    "tests/test_reliability.py::test_sigkill_and_resume_of_a_gan_and_a_lora_run_equal_the_uninterrupted_runs",
    "tests/test_trainer.py::test_sigkill_at_random_moments_then_resume_is_bit_identical",
    "tests/test_golden_exports.py::",
    "tests/test_students.py::",
)


def pytest_collection_modifyitems(items):
    """The tests in LONGEST_FIRST first, in that order; the rest keep their order (a stable sort, the same on every
    xdist worker, whose collections must agree)."""

    def rank(item):
        return next(
            (i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST)
        )

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist (`-p no:xdist`) must not refuse it
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        """One work unit per test, except the SHARED_FIXTURE_GROUPS, one unit each; units queued in collection order."""

        def _split_scope(self, nodeid):
            return next((group for group in SHARED_FIXTURE_GROUPS if nodeid.startswith(group)), nodeid)

    return Scheduling(config, log)


def tiny_unet(num_classes: int = 3, time_cond_proj_dim: int | None = None, sample_size: int = 8, seed: int = 0):
    """A few-thousand-parameter class-conditional UNet2DConditionModel (real diffusers class, random weights)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
        layers_per_block=1,
        num_class_embeds=num_classes + 1,
        attention_head_dim=4,
        norm_num_groups=4,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def tiny_unet2d(num_class_embeds: int | None = None, seed: int = 0):
    """A tiny diffusers UNet2DModel (no cross-attention), optionally class-conditional."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


def tiny_text_unet(cross_attention_dim: int = 12, seed: int = 0, channels: int = 1, **extra):
    """A tiny text-conditioned UNet2DConditionModel (cross-attention at the lower resolution); ``extra`` config keys
    (e.g. SDXL's added conditions)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
        **extra,
    )


def tiny_scheduler(prediction_type: str = "v_prediction"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A pipeline-style folder (unet/ + scheduler/) holding a tiny random class-conditional UNet."""
    tiny_unet().save_pretrained(tmp_path / "unet")
    tiny_scheduler().save_pretrained(tmp_path / "scheduler")
    return tmp_path


class MLPDenoiser(torch.nn.Module):
    """A small trainable x0-predictor for vector "images" [B, 1, 1, D], used as the student of analytic teachers."""

    def __init__(self, dim: int, hidden: int = 128, extra: int = 0):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 2 + extra, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, dim),
        )

    def forward(self, x_t, t, *extra):
        flat = x_t.reshape(len(x_t), -1)
        feats = torch.cat([flat, torch.sin(t)[:, None], torch.cos(t)[:, None], *(e[:, None] for e in extra)], dim=1)
        return (flat + self.net(feats)).reshape(x_t.shape)


def mlp_student(schedule, dim: int, seed: int = 0, prediction: str = "x0", interval: bool = False):
    """A Denoiser whose native prediction (x0 unless told) comes from an MLP (no diffusers backbone); with
    ``interval``, the MLP also takes the guidance-embedding input ``w`` (a MeanFlow student's jump length)."""
    from stepdistill.denoiser import Denoiser

    class Student(Denoiser):
        def native(self, x_t, t, cond, w=None):
            return self.mlp(x_t, t, w.to(x_t.dtype)) if interval else self.mlp(x_t, t)

    torch.manual_seed(seed)
    student = Student(None, schedule, prediction, guidance_embedding_dim=1 if interval else None)
    student.mlp = MLPDenoiser(dim, extra=int(interval))
    return student


def train_on_tiny_teacher(main, tmp_path, *flags) -> list[dict]:
    """Run a train script's ``main`` for 2 steps on a tiny class-conditional teacher saved under ``tmp_path``, with
    ``flags``; its run folder is ``tmp_path / "r"``. Returns the JSONL log's entries."""
    import json

    tiny_unet(num_classes=10).save_pretrained(tmp_path / "teacher" / "unet")
    tiny_scheduler().save_pretrained(tmp_path / "teacher" / "scheduler")
    common = ["--max-steps", "2", "--batch-size", "4", "--data-limit", "16", "--log-every", "1"]
    main(["--teacher", str(tmp_path / "teacher"), *flags, *common, "--output-dir", str(tmp_path / "r")])
    return [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]


def reset_accelerate_state():
    """Forget accelerate's process-wide state, so that each test (or a resumed run inside one) builds a fresh
    Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def load_script(script: str):
    """A script file (``train/x.py``) as a module, its ``if __name__ == "__main__"`` block not run; loaded once."""
    import importlib.util
    from pathlib import Path

    if script not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"_script_{Path(script).stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


_SCRIPTS: dict = {}


def run_entry_point(entry, argv):
    """Run a command's entry point (``entry()``, e.g. ``eval/evaluate.py``'s ``cli``) in this process with
    ``sys.argv = argv``, as its script would run (without the interpreter's start-up, 10-20 s here): output captured,
    STEPDISTILL_DEBUG unset, accelerate's state fresh before and after. Returns returncode, stdout and stderr like
    ``subprocess.run``; an exception that escapes ``entry`` is printed as its traceback, with returncode 1."""
    import contextlib
    import io
    import sys
    import traceback
    import types

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, sys.argv = sys.argv, list(argv)
    debug = os.environ.pop("STEPDISTILL_DEBUG", None)
    reset_accelerate_state()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        if debug is not None:
            os.environ["STEPDISTILL_DEBUG"] = debug
        reset_accelerate_state()
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture
def fresh_accelerate_state():
    """Use with ``pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")`` in modules that build trainers."""
    reset_accelerate_state()
    yield
