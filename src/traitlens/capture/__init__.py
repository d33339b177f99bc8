"""What does the model compute on the trait prompts? Streaming capture of pooled
hidden states and per-neuron firing statistics (memory independent of token count)."""

from traitlens.capture.artifacts import Activations, NeuronStats
from traitlens.capture.capture import ChatPrompt, Prompt, capture_activations, capture_job
from traitlens.capture.pipeline import CaptureRun, capture_run
from traitlens.capture.reducers import POOLINGS, StreamingQuantile, pooling_weights

__all__ = [
    "POOLINGS",
    "Activations",
    "CaptureRun",
    "ChatPrompt",
    "NeuronStats",
    "Prompt",
    "StreamingQuantile",
    "capture_activations",
    "capture_job",
    "capture_run",
    "pooling_weights",
]
