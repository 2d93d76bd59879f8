"""Learned loss functions as torch modules with exact SymPy export."""

from losses.base import LearnedLoss, encode_targets, prediction_transform
from losses.errors import UserError
from losses.formula import FormulaError, parse_formula
from losses.io import LossFileError, load_loss, loss_from_dict, loss_to_dict, save_loss
from losses.mlp import MLPLoss
from losses.scaled import GradientScaledLoss
from losses.registry import LOSS_NAMES, build_loss
from losses.robust import FocalLoss, GeneralizedCrossEntropyLoss
from losses.standard import CrossEntropyLoss, SquaredErrorLoss, task_gradient, task_loss, task_loss_module
from losses.symbolic import SYMPY_TO_TORCH, SymbolicLoss, UnsupportedFunctionError
from losses.symbols import Y_PRED, Y_TRUE
from losses.taylor import TaylorLoss

__all__ = [
    "LearnedLoss",
    "MLPLoss",
    "TaylorLoss",
    "CrossEntropyLoss",
    "SquaredErrorLoss",
    "GeneralizedCrossEntropyLoss",
    "FocalLoss",
    "task_loss",
    "task_loss_module",
    "task_gradient",
    "SymbolicLoss",
    "parse_formula",
    "FormulaError",
    "GradientScaledLoss",
    "Y_PRED",
    "Y_TRUE",
    "SYMPY_TO_TORCH",
    "UnsupportedFunctionError",
    "save_loss",
    "load_loss",
    "loss_to_dict",
    "loss_from_dict",
    "LossFileError",
    "UserError",
    "build_loss",
    "LOSS_NAMES",
    "prediction_transform",
    "encode_targets",
]
