"""Chat templates: how a conversation becomes text, split into prompt segments and trained (answer) segments.

``none`` concatenates prompt, answer and EOS with no markup (closed-vocabulary LMs); ``plain`` is a minimal
``user:`` / ``assistant:`` format for the tiny byte-level LMs; the others follow each family's released
format: Vicuna v1.1 (LLaVA-1.5, InstructBLIP), Llama-2-chat, Mistral-instruct and Qwen2's ChatML. A template renders
``messages`` (``{"role": "system"|"user"|"assistant", "content": str}``) into ``(text, is_target)`` segments; the
collator tokenizes each segment and puts labels only on target segments (assistant turns and their end marker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Message = dict[str, str]
Segment = tuple[str, bool]


@dataclass(frozen=True)
class ChatTemplate:
    """A turn-based template.

    Attributes:
        name: registry key.
        system: default system prompt (used when the conversation has none), or ``""``.
        system_format: how a system prompt is written (``{content}``).
        user_format: how a user turn is written (``{content}``).
        assistant_prefix: text opening an assistant turn (part of the prompt; generation starts after it).
        assistant_format: how the answer itself is written (``{content}``; a leading space keeps words apart when
            the prefix ends without one, so generation starts right after the prefix).
        assistant_suffix: text closing an assistant turn (trained, so the model learns to stop);
            ``{eos}`` is replaced by the tokenizer's EOS string.
        system_in_user: write the system prompt inside the first user turn (Llama-2-chat's ``<<SYS>>`` block).
    """

    name: str
    system: str = ""
    system_format: str = "{content}"
    user_format: str = "{content}"
    assistant_prefix: str = ""
    assistant_format: str = "{content}"
    assistant_suffix: str = "{eos}"
    system_in_user: bool = False

    def render(self, messages: Sequence[Message], eos: str, add_generation_prompt: bool = False) -> list[Segment]:
        """Segments ``(text, is_target)`` for ``messages``; with ``add_generation_prompt`` end on an open assistant
        turn."""
        segments: list[Segment] = []
        messages = list(messages)
        system = self.system
        if messages and messages[0]["role"] == "system":
            system = messages.pop(0)["content"]
        prefix = self.system_format.format(content=system) if system else ""
        if prefix and not self.system_in_user:
            segments.append((prefix, False))
            prefix = ""
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "user":
                content, prefix = prefix + content, ""
                segments.append((self.user_format.format(content=content), False))
            elif role == "assistant":
                segments.append((self.assistant_prefix, False))
                answer = self.assistant_format.format(content=content) + self.assistant_suffix.format(eos=eos)
                segments.append((answer, True))
            else:
                raise ValueError(f"Unknown chat role '{role}'; use 'system' (first only), 'user' or 'assistant'")
        if add_generation_prompt:
            segments.append((self.assistant_prefix, False))
        return [(text, target) for text, target in segments if text]


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("none"),  # prompt text then answer + EOS, no markup (closed-vocabulary LMs such as the world's)
        ChatTemplate(
            "plain",
            user_format="user: {content}\n",
            assistant_prefix="assistant:",
            assistant_format=" {content}",
            assistant_suffix=" {eos}",
        ),
        ChatTemplate(
            "vicuna",
            system=VICUNA_SYSTEM,
            system_format="{content} ",
            user_format="USER: {content} ",
            assistant_prefix="ASSISTANT:",
            assistant_format=" {content}",
            assistant_suffix="{eos}",
        ),
        ChatTemplate(
            "llama2",
            system_format="<<SYS>>\n{content}\n<</SYS>>\n\n",
            user_format="[INST] {content} [/INST]",
            assistant_suffix=" {eos}",
            system_in_user=True,
        ),
        ChatTemplate("mistral", user_format="[INST] {content} [/INST]", assistant_suffix="{eos}"),
        ChatTemplate(
            "chatml",
            system="You are a helpful assistant.",
            system_format="<|im_start|>system\n{content}<|im_end|>\n",
            user_format="<|im_start|>user\n{content}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            assistant_suffix="<|im_end|>\n",
        ),
    )
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"Unknown chat template '{name}'. Known templates: {', '.join(sorted(TEMPLATES))}.")
    return TEMPLATES[name]
