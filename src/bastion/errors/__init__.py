"""The error-code registry and the RFC 9457 problem renderer."""

from bastion.errors.codes import ALL_CODES, ErrorCode, by_code
from bastion.errors.problem import ProblemError, render_problem

__all__ = ["ALL_CODES", "ErrorCode", "ProblemError", "by_code", "render_problem"]
