"""Pre-training: token data, schedule, the training loop, checkpoints, parallelism, Ray Train glue."""

from llm.train.checkpoint import load_model
from llm.train.data import TokenDataset, write_token_dataset
from llm.train.loop import TrainSummary, train
from llm.train.schedule import learning_rate
from llm.train.trainer import PretrainResult, pretrain

__all__ = [
    "PretrainResult",
    "TokenDataset",
    "TrainSummary",
    "learning_rate",
    "load_model",
    "pretrain",
    "train",
    "write_token_dataset",
]
