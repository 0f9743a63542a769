import itertools
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from stepdistill.schedules import (
    PREDICTIONS,
    Schedule,
    add_noise,
    boundary_scalings,
    check_prediction,
    combine,
    convert,
    ddim_step,
    karras_sigma,
    split,
    time_at_edm_sigma,
    timestep_grid,
)

SCHEDULES = {
    "discrete": lambda: Schedule.from_scheduler_config(
        {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    ),
    "discrete_cosine": lambda: Schedule.from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"}),
    "cosine": Schedule.cosine,
    "flow": Schedule.flow,
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("src,dst", list(itertools.product(PREDICTIONS, PREDICTIONS)))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), t_lo=st.floats(0.02, 0.97))
def test_conversions_round_trip(name, src, dst, seed, t_lo):
    schedule = SCHEDULES[name]()
    g = torch.Generator().manual_seed(seed)
    t = t_lo + 0.01 * torch.rand(16, generator=g, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    x0, eps = torch.randn(2, 16, 3, 4, 4, generator=g, dtype=torch.float64)
    x_t = add_noise(x0, eps, alpha, sigma)
    pred = combine(x0, eps, src, alpha, sigma)
    there = convert(pred, src, dst, x_t, alpha, sigma)
    back = convert(there, dst, src, x_t, alpha, sigma)
    torch.testing.assert_close(back, pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(there, combine(x0, eps, dst, alpha, sigma), rtol=1e-5, atol=1e-5)
    x0_hat, eps_hat = split(pred, src, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_shape_and_monotonicity(name):
    schedule = SCHEDULES[name]()
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    logsnr = schedule.log_snr(t[1:-1])
    assert (logsnr[1:] < logsnr[:-1]).all(), "log-SNR must decrease with t"
    if name == "flow":
        torch.testing.assert_close(alpha + sigma, torch.ones_like(t))
    else:
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    if name.startswith("discrete") or name == "flow":
        assert alpha[0] == 1 and sigma[0] == 0, "t = 0 is the clean endpoint"


def test_cosine_log_snr_bounds():
    schedule = Schedule.cosine(logsnr_min=-15, logsnr_max=12)
    torch.testing.assert_close(
        schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64)),
        torch.tensor([12.0, -15.0], dtype=torch.float64),
    )


def test_discrete_matches_diffusers_add_noise_and_velocity():
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    schedule = Schedule.from_scheduler_config(dict(scheduler.config))
    idx = torch.tensor([0, 1, 17, 500, 998, 999])
    t = (idx + 1).double() / 1000
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod[idx].double())
    x0, eps = torch.randn(2, len(idx), 1, 4, 4)
    torch.testing.assert_close(add_noise(x0, eps, alpha.float(), sigma.float()), scheduler.add_noise(x0, eps, idx))
    torch.testing.assert_close(
        combine(x0, eps, "v", alpha.float(), sigma.float()), scheduler.get_velocity(x0, eps, idx)
    )
    assert schedule.model_timestep(t).round().long().tolist() == idx.tolist()


@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1), ("linspace", 0)])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 50])
def test_timestep_grid_matches_diffusers(spacing, offset, steps):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(steps)
    grid = timestep_grid(Schedule.from_scheduler_config(dict(scheduler.config)), steps, spacing, offset)
    assert (grid * 1000 - 1).round().long().tolist() == scheduler.timesteps.tolist()
    if spacing == "trailing":
        assert grid[0] == 1.0


def test_ddim_step_to_clean_returns_x0_and_flow_step_is_euler():
    x0, eps = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ddim_step(x0, eps, 1.0, 0.0), x0)
    schedule = Schedule.flow()
    t, s = torch.full((3,), 0.8, dtype=torch.float64), torch.full((3,), 0.3, dtype=torch.float64)
    x_t = add_noise(x0, eps, *schedule.alpha_sigma(t))
    euler = x_t + (0.3 - 0.8) * (eps - x0)
    torch.testing.assert_close(ddim_step(x0, eps, *schedule.alpha_sigma(s)), euler)


def test_index_time_is_the_training_grid_and_time_index_inverts_it():
    schedule = SCHEDULES["discrete"]()
    index = torch.arange(-1, 1000, dtype=torch.float64)
    t = schedule.index_time(index)
    assert t[0] == 0 and t[-1] == 1 and t.dtype == torch.float64
    torch.testing.assert_close(schedule.model_timestep(t), index)  # diffusers' timestep of each grid time
    assert [schedule.time_index(v) for v in t] == index.long().tolist()
    assert schedule.time_index(schedule.index_time(755)) == 755


def test_boundary_scalings_are_lcms_and_a_flows_are_the_identity():
    """Discrete schedules: LCMScheduler's own c_skip / c_out at each timestep (c_skip = 1 at the clean end). A flow's
    consistency function is its x0 (c_skip = 0, c_out = 1), which is already x_t at t = 0: the form the stochastic
    FlowMatchEulerDiscreteScheduler samples, so a flow's consistency student exports without custom code."""
    schedule = SCHEDULES["discrete"]()
    lcm = LCMScheduler(timestep_scaling=10.0)
    timesteps = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = boundary_scalings(schedule, (timesteps.double() + 1) / 1000, 0.5, 10.0)
    for i, step in enumerate(timesteps.tolist()):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(step)
        assert abs(c_skip[i] - ref_skip) < 1e-9 and abs(c_out[i] - ref_out) < 1e-9
    assert c_skip[0] == 1 and c_out[0] == 0
    flow = Schedule.flow()
    t = torch.tensor([0.0, 0.02, 0.5, 1.0], dtype=torch.float64)
    c_skip, c_out = boundary_scalings(flow, t, 0.5, 10.0)
    assert torch.equal(c_skip, torch.zeros_like(t)) and torch.equal(c_out, torch.ones_like(t))
    x_t, velocity = torch.randn(2, 4, 3, dtype=torch.float64)
    x0 = convert(velocity, "flow", "x0", x_t, *flow.alpha_sigma(t[:1]))
    torch.testing.assert_close(x0, x_t)  # the boundary condition f(x, 0) = x, with no scalings


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown prediction type"):
        check_prediction("noise")
    assert check_prediction("v_prediction") == "v"
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        Schedule.from_scheduler_config(tmp_path)
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Schedule.from_scheduler_config(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "wiggly"}))
    with pytest.raises(ValueError, match="Bad scheduler config"):
        Schedule.from_scheduler_config(tmp_path)
    with pytest.raises(ValueError, match="non-increasing"):
        Schedule.discrete(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="num_steps"):
        timestep_grid(Schedule.flow(), 0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_time_at_edm_sigma_inverts_every_schedule(name):
    """SiD's noise levels are EDM sigmas (sigma / alpha); the time found for each has exactly that level, and levels
    beyond a schedule's range map to its ends."""
    schedule = SCHEDULES[name]()
    levels = karras_sigma(torch.linspace(0.05, 0.8, 9))
    assert levels[0] > 0.002 and 20 < float(levels[-1]) < 30 and bool((levels.diff() > 0).all())  # rho-7 ramp
    t = time_at_edm_sigma(schedule, levels)
    alpha, sigma = schedule.alpha_sigma(t)
    top = schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    inside = levels < top[1] / top[0]
    assert torch.allclose((sigma / alpha)[inside], levels[inside], rtol=1e-6)
    assert bool((t[~inside] == 1).all()) and float(time_at_edm_sigma(schedule, 1e-9)) < 1e-6
