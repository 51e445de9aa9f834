"""data.prompt_template=chat: prompts through the tokenizer's own chat template (instruction-tuned models)."""

from __future__ import annotations

import pytest

from tether.data.tokenize import CHAT, dialogue_messages, format_prompt, prompt_token_ids, tokenize_prompts, tokenize_sft
from tether.errors import DataError
from tether.models.tiny import tiny_causal_lm
from tether.types import SFTExample

# a ChatML template like SmolLM2's, small enough to check by hand
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def tokenizer():
    _, tok = tiny_causal_lm("llama", seed=0)
    tok.chat_template = CHATML
    return tok


def test_a_dialogue_becomes_its_turns_and_a_plain_prompt_one_user_message():
    hh = "\n\nHuman: How do I bake bread?\n\nAssistant: Flour, water, yeast.\n\nHuman: And salt?\n\nAssistant:"
    assert dialogue_messages(hh) == [
        {"role": "user", "content": "How do I bake bread?"}, {"role": "assistant", "content": "Flour, water, yeast."},
        {"role": "user", "content": "And salt?"},
    ]
    assert dialogue_messages("Name a colour.") == [{"role": "user", "content": "Name a colour."}]


def test_chat_prompts_are_the_tokenizers_template_with_the_assistant_turn_open(tokenizer):
    ids = prompt_token_ids("Name a colour.", tokenizer, CHAT)
    assert tokenizer.decode(ids) == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenize_prompts(["Name a colour."], tokenizer, CHAT, 8) == [ids[-8:]]  # cut from the left as before
    # the reply follows the open turn without a leading space, and ends with EOS
    item = tokenize_sft([SFTExample("Name a colour.", "Blue.")], tokenizer, CHAT, 256, 128, "left")[0]
    reply = [t for t, m in zip(item.input_ids, item.loss_mask) if m]
    assert item.input_ids[: len(ids)] == ids and tokenizer.decode(reply[:-1]) == "Blue." and reply[-1] == tokenizer.eos_token_id
    # text readers (a judge's prompt) get the Human/Assistant form
    assert format_prompt("Name a colour.", CHAT) == "\n\nHuman: Name a colour.\n\nAssistant:"


def test_chat_without_a_chat_template_is_one_clear_error():
    _, tok = tiny_causal_lm("llama", seed=0)
    tok.chat_template = None
    with pytest.raises(DataError, match="prompt_template=chat: this tokenizer has no chat template"):
        prompt_token_ids("Hi.", tok, CHAT)
