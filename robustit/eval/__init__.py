"""Evaluation: caption metrics (pycocoevalcap), ASR matchers, VQA accuracy.

The names re-exported here are the metric side only and import neither torch nor model code,
so the report and the CLI can score stored generations without loading a model. Generation
code lives in its own module and is imported from there.
"""

from .asr import Matcher, RateResult, attack_success_rate, false_trigger_rate
from .caption_metrics import CaptionScores, check_environment, score_captions
from .vqa import normalize_answer, question_accuracy, vqa_accuracy

__all__ = [
    "CaptionScores",
    "Matcher",
    "RateResult",
    "attack_success_rate",
    "check_environment",
    "false_trigger_rate",
    "normalize_answer",
    "question_accuracy",
    "score_captions",
    "vqa_accuracy",
]
