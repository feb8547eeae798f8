"""Self-supervised pretraining (SimCLR, MoCo v2, DINO) of timm backbones into encoders that `embed` uses.

Modules: config (TrainConfig + YAML), transforms/ (views), heads/, losses/, methods/ (the Method
interface and METHODS registry), optimizers (SGD/LARS/AdamW), plan (budget → steps), schedules, data (views and step
batches), monitor (collapse, online k-NN), checkpoint, rundir, distributed, backbone, train (the trainer).
"""
from __future__ import annotations

from .config import TrainConfig, load_yaml, to_yaml
from .methods import METHODS, Method, MethodOutput, get_method, register_method
from ..errors import TrainingDivergedError
from .train import TrainResult, train

__all__ = ["METHODS", "Method", "MethodOutput", "TrainConfig", "TrainResult", "TrainingDivergedError", "get_method",
           "load_yaml", "register_method", "to_yaml", "train"]
