"""A1111 sampler and schedule names mapped to diffusers schedulers. Light: no torch, no diffusers import."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from suite.core.errors import NotFound, ValidationFailed

SIGMA_SCHEDULES = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}
SPACING_SCHEDULES = {"sgm_uniform": "trailing", "simple": "trailing"}
SCHEDULES = ("automatic", "uniform", "karras", "exponential", "beta", "sgm_uniform", "simple")
SCHEDULE_LABELS = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "beta": "Beta",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
}


@dataclass(frozen=True)
class Sampler:
    name: str
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    sigma_kwargs: bool = True  # takes use_*_sigmas
    spacing: bool = True  # takes timestep_spacing
    requires: tuple[str, ...] = ()
    a1111_default: str = "uniform"  # what "automatic" means on /sdapi routes
    seeded: bool = False  # gets noise_sampler_seed
    a1111: bool = True


SAMPLERS: tuple[Sampler, ...] = (
    Sampler(
        "Euler a",
        "EulerAncestralDiscreteScheduler",
        aliases=("k_euler_a", "k_euler_ancestral", "EULER_A"),
        sigma_kwargs=False,
    ),
    Sampler("Euler", "EulerDiscreteScheduler", aliases=("k_euler", "EULER")),
    Sampler("LMS", "LMSDiscreteScheduler", aliases=("k_lms", "LMS"), requires=("scipy",)),
    Sampler("Heun", "HeunDiscreteScheduler", aliases=("k_heun", "HEUN")),
    Sampler("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2", "KDPM2"), a1111_default="karras"),
    Sampler(
        "DPM2 a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a", "KDPM2_A"), a1111_default="karras"
    ),
    Sampler(
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        aliases=("k_dpmpp_2m", "DPM_SOLVER_MULTISTEP"),
        a1111_default="karras",
    ),
    Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        aliases=("k_dpmpp_2m_sde",),
        a1111_default="exponential",
    ),
    Sampler(
        "DPM++ 2M SDE Heun",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
        a1111_default="exponential",
    ),
    Sampler(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        a1111_default="exponential",
    ),
    Sampler(
        "DPM++ SDE",
        "DPMSolverSDEScheduler",
        aliases=("k_dpmpp_sde", "DPM_SOLVER_SDE"),
        requires=("torchsde",),
        a1111_default="karras",
        seeded=True,
    ),
    Sampler("DDIM", "DDIMScheduler", aliases=("ddim", "DDIM"), sigma_kwargs=False),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, aliases=("plms", "PNDM"), sigma_kwargs=False),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc", "UNI_PC")),
    Sampler("LCM", "LCMScheduler", aliases=("k_lcm", "LCM"), sigma_kwargs=False),
    Sampler(
        "DPM++ 2S",
        "DPMSolverSinglestepScheduler",
        aliases=("DPM++ 1M", "DPM_SOLVER_SINGLESTEP"),
        spacing=False,
    ),
    Sampler("DDPM", "DDPMScheduler", aliases=("DDPMS",), sigma_kwargs=False, a1111=False),
    Sampler("DEIS", "DEISMultistepScheduler", aliases=("DEIS",), a1111=False),
    Sampler("TCD", "TCDScheduler", aliases=("TCD",), sigma_kwargs=False, a1111=False),
)

_BY_NAME: dict[str, Sampler] = {}
for _s in SAMPLERS:
    for _n in (_s.name, *_s.aliases):
        _BY_NAME.setdefault(_n.lower(), _s)

# Upstream enum values that carry a schedule.
LEGACY_ALIASES = {
    "dpm_solver_multistep_karras": ("DPM++ 2M", "karras"),
    "dpm_solver_sde_karras": ("DPM++ SDE", "karras"),
}


@dataclass(frozen=True)
class SamplerChoice:
    sampler: Sampler
    schedule: str  # one of SCHEDULES, "automatic" resolved
    kwargs: dict[str, Any]

    @property
    def label(self) -> str:
        return self.sampler.name

    @property
    def schedule_label(self) -> str:
        return SCHEDULE_LABELS[self.schedule]


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def split_legacy(name: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'karras'): a trailing schedule label is split off (A1111 >= 1.9)."""
    key = name.strip()
    if key.lower() in LEGACY_ALIASES:
        return LEGACY_ALIASES[key.lower()]
    if key.lower() in _BY_NAME:
        return key, None
    for schedule, label in SCHEDULE_LABELS.items():
        if schedule != "automatic" and key.lower().endswith(" " + label.lower()):
            return key[: -len(label) - 1].strip(), schedule
    return key, None


def find_sampler(name: str) -> Sampler:
    sampler = _BY_NAME.get(name.strip().lower())
    if sampler is None:
        raise NotFound(f"Sampler not found: {name!r}", code="unknown_sampler")
    return sampler


def resolve(name: str, schedule: str | None = None, *, a1111: bool = False) -> SamplerChoice:
    """Validate a sampler name and schedule; the kwargs for `from_config` on top of the sampler's own.

    Raises NotFound for an unknown sampler and ValidationFailed for a schedule the class cannot take or a
    missing optional package.
    """
    base, legacy_schedule = split_legacy(name)
    sampler = find_sampler(base)
    sched = (schedule or "").strip().lower().replace(" ", "_") or None
    if legacy_schedule and sched in (None, "automatic"):
        sched = legacy_schedule
    if sched in (None, "automatic"):
        sched = sampler.a1111_default if a1111 else "uniform"
        if sched in SIGMA_SCHEDULES and not sampler.sigma_kwargs:
            sched = "uniform"
    if sched not in SCHEDULES:
        raise ValidationFailed(
            f"unknown schedule {schedule!r}; one of {', '.join(SCHEDULES)}", code="unknown_schedule"
        )
    for pkg in sampler.requires:
        if not package_available(pkg):
            raise ValidationFailed(
                f"sampler {sampler.name!r} needs the {pkg} package (pip install {pkg})",
                code="sampler_unavailable",
            )
    kwargs = dict(sampler.kwargs)
    if sched in SIGMA_SCHEDULES:
        if not sampler.sigma_kwargs:
            raise ValidationFailed(
                f"sampler {sampler.name!r} cannot use the {sched} schedule", code="schedule_unsupported"
            )
        if sched == "beta" and not package_available("scipy"):
            raise ValidationFailed("the beta schedule needs the scipy package", code="sampler_unavailable")
        kwargs[SIGMA_SCHEDULES[sched]] = True
    elif sched in SPACING_SCHEDULES:
        if not sampler.spacing:
            raise ValidationFailed(
                f"sampler {sampler.name!r} cannot use the {sched} schedule", code="schedule_unsupported"
            )
        kwargs["timestep_spacing"] = SPACING_SCHEDULES[sched]
    return SamplerChoice(sampler=sampler, schedule=sched, kwargs=kwargs)


def describe() -> list[dict[str, Any]]:
    """GET /samplers: each sampler with its class, kwargs, schedules and availability."""
    out = []
    for s in SAMPLERS:
        missing = [p for p in s.requires if not package_available(p)]
        schedules = ["automatic", "uniform"]
        if s.sigma_kwargs:
            schedules += ["karras", "exponential", "beta"]
        if s.spacing:
            schedules += ["sgm_uniform", "simple"]
        out.append(
            {
                "name": s.name,
                "aliases": list(s.aliases),
                "class": s.cls,
                "kwargs": s.kwargs,
                "schedules": schedules,
                "a1111_default_schedule": s.a1111_default,
                "available": not missing,
                "requires": list(s.requires),
                "a1111": s.a1111,
            }
        )
    return out
