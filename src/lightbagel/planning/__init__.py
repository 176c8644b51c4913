"""Planning a recipe without weights or GPUs: parameters, FLOPs and memory from a meta-device build."""

from lightbagel.planning.plan import Plan, make_plan
from lightbagel.planning.report import format_plan

__all__ = ["Plan", "format_plan", "make_plan"]
