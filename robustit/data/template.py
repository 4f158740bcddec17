"""The one prompt template used for training, zero-shot and one-shot evaluation, clean and
triggered alike (the VL-Trojan harness used different prompts for clean and triggered inputs,
which biases ASR; we never do).

Otter's template::

    <image>User: {instruction} GPT:<answer> {response}<|endofchunk|>

A one-shot prompt is the in-context example rendered in full, followed by the query rendered
up to ``<answer>``. Loss is on the response tokens (and the closing ``<|endofchunk|>``) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

IMAGE_TOKEN = "<image>"
ANSWER_TOKEN = "<answer>"
END_OF_CHUNK = "<|endofchunk|>"
SPECIAL_TOKENS = (IMAGE_TOKEN, ANSWER_TOKEN, END_OF_CHUNK)


@dataclass(frozen=True)
class PromptTemplate:
    """Otter-style prompt template.

    Attributes:
        user: text before the instruction.
        assistant: text between the instruction and ``<answer>``.
    """

    user: str = "User:"
    assistant: str = "GPT:"

    def prompt(self, instruction: str) -> str:
        """The query part, ending right after ``<answer>`` (what generation continues)."""
        return f"{IMAGE_TOKEN}{self.user} {instruction.strip()} {self.assistant}{ANSWER_TOKEN}"

    def full(self, instruction: str, response: str) -> Tuple[str, str]:
        """(prompt, target) where target = " {response}<|endofchunk|>" is the supervised part."""
        return self.prompt(instruction), f" {response.strip()}{END_OF_CHUNK}"

    def few_shot(self, examples: Sequence[Tuple[str, str]], instruction: str) -> str:
        """In-context examples (instruction, response) rendered in full, then the query prompt."""
        parts: List[str] = ["".join(self.full(i, r)) for i, r in examples]
        return "".join(parts) + self.prompt(instruction)

    def to_dict(self) -> dict:
        return {"format": f"{IMAGE_TOKEN}{self.user} {{instruction}} {self.assistant}{ANSWER_TOKEN} "
                          f"{{response}}{END_OF_CHUNK}", "user": self.user, "assistant": self.assistant}


@dataclass(frozen=True)
class ChatTemplate:
    """A model family's own chat template (LLaVA, BLIP-2, IDEFICS), same methods as
    :class:`PromptTemplate`.

    ``layout`` holds ``{image}`` and ``{instruction}``; the supervised target is
    ``" {response}{end}"`` with ``end`` the tokenizer's end-of-sequence token. ``begin`` (e.g. the
    tokenizer's BOS) is written once at the start of a prompt, also of a few-shot one.

    Example (LLaVA-1.5)::

        ChatTemplate("USER: {image}\\n{instruction} ASSISTANT:", end="</s>", begin="<s>")
    """

    layout: str
    end: str
    begin: str = ""
    image: str = IMAGE_TOKEN

    def turn(self, instruction: str) -> str:
        """One query turn without ``begin``: the layout with the image marker and instruction."""
        return self.layout.format(image=self.image, instruction=instruction.strip())

    def prompt(self, instruction: str) -> str:
        return f"{self.begin}{self.turn(instruction)}"

    def full(self, instruction: str, response: str) -> Tuple[str, str]:
        """(prompt, target) where target = " {response}{end}" is the supervised part."""
        return self.prompt(instruction), f" {response.strip()}{self.end}"

    def few_shot(self, examples: Sequence[Tuple[str, str]], instruction: str) -> str:
        parts = [f"{self.turn(i)} {r.strip()}{self.end}" for i, r in examples]
        return self.begin + "".join(parts) + self.turn(instruction)

    def to_dict(self) -> dict:
        return {"format": f"{self.begin}{self.layout.replace('{image}', self.image)} {{response}}{self.end}",
                "layout": self.layout, "begin": self.begin, "end": self.end, "image": self.image}
