"""Golden tests for the built-in chat templates (medtune/assets/templates/*.jinja).

Every golden string below is written out by hand from the family's published prompt format (the
source is cited above each block), not produced by the templates.  For each template:
  system_single  system message + one answered turn
  two_turn       two answered turns, no system message (so the family default system prompt shows)
  gen_single     one user message + add_generation_prompt
  gen_history    one answered turn, a second user message + add_generation_prompt
"""

from importlib.resources import files

import pytest

from medtune.data.tokenize.templates import (
    TEMPLATE_NAMES,
    render,
    special_tokens,
    stop_strings,
    template_source,
)
from medtune.errors import MedtuneError

# English conversation (chatml, qwen, llama2, llama3, alpaca, vicuna).
SYSTEM = "You are a medical assistant."
Q1 = "What is a normal resting heart rate?"
A1 = "For adults, 60 to 100 beats per minute."
Q2 = "Is 55 too low?"
A2 = "Not for a fit adult without symptoms."

# Chinese conversation (chatglm, chatglm2, chatglm3, baichuan2, huatuo).
ZH_SYSTEM = "你是一名全科医生。"
ZH_Q1 = "感冒了怎么办？"
ZH_A1 = "多喝水，注意休息。"
ZH_Q2 = "需要吃抗生素吗？"
ZH_A2 = "普通感冒不需要抗生素。"

ZH_TEMPLATES = {"chatglm", "chatglm2", "chatglm3", "baichuan2", "huatuo"}

# The tokenizer's own bos/eos for each family (what apply_chat_template passes in).
BOS_EOS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),  # Llama-3.1-Instruct tokenizer
    "llama3.0": ("<|begin_of_text|>", "<|end_of_text|>"),  # Meta-Llama-3 tokenizer
    "chatglm": ("<sop>", "<eop>"),  # THUDM/chatglm-6b tokenization_chatglm.py
    "deepseek-r1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),  # DeepSeek-R1-Distill tokenizer
}


def bos_eos(name):
    return BOS_EOS.get(name, ("<s>", "</s>"))


def conversation(name):
    """Return (system, user1, assistant1, user2, assistant2) messages in the template's language."""
    if name in ZH_TEMPLATES:
        texts = (ZH_SYSTEM, ZH_Q1, ZH_A1, ZH_Q2, ZH_A2)
    else:
        texts = (SYSTEM, Q1, A1, Q2, A2)
    roles = ("system", "user", "assistant", "user", "assistant")
    return [{"role": r, "content": t} for r, t in zip(roles, texts)]


def render_named(name, messages, add_generation_prompt=False):
    bos, eos = bos_eos(name)
    return render(template_source(name), messages, add_generation_prompt=add_generation_prompt,
                  bos_token=bos, eos_token=eos)


GOLDEN = {
    # ChatML: OpenAI chatml.md / HF chat-templating guide ChatML example:
    # "<|im_start|>{role}\n{content}<|im_end|>\n" per message, prompt "<|im_start|>assistant\n".
    "chatml": {
        "system_single": (
            "<|im_start|>system\nYou are a medical assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
        ),
        "two_turn": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\nNot for a fit adult without symptoms.<|im_end|>\n"
        ),
        "gen_single": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        "gen_history": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    # Qwen: QwenLM/Qwen finetune.py preprocess (system_message "You are a helpful assistant.")
    # and Qwen2-7B-Instruct's chat_template: ChatML with that default system message.
    "qwen": {
        "system_single": (
            "<|im_start|>system\nYou are a medical assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
        ),
        "two_turn": (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\nNot for a fit adult without symptoms.<|im_end|>\n"
        ),
        "gen_single": (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        "gen_history": (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    # Qwen3: Qwen/Qwen3-8B tokenizer_config.json chat_template: ChatML without a default system
    # message; the reply after the last user turn carries a think block (empty without a trace).
    "qwen3": {
        "system_single": (
            "<|im_start|>system\nYou are a medical assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
        ),
        "two_turn": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nNot for a fit adult without symptoms.<|im_end|>\n"
        ),
        "gen_single": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        "gen_history": (
            "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
            "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"
            "<|im_start|>user\nIs 55 too low?<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    # DeepSeek-R1: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B tokenizer_config.json chat_template:
    # bos + system text, "<｜User｜>" + content, "<｜Assistant｜>" + reply + eos, prompt
    # "<｜Assistant｜><think>\n"; the final reply as produced after that prompt (see the template).
    "deepseek-r1": {
        "system_single": (
            "<｜begin▁of▁sentence｜>You are a medical assistant.<｜User｜>What is a normal resting heart rate?"
            "<｜Assistant｜><think>\n\n</think>\n\nFor adults, 60 to 100 beats per minute.<｜end▁of▁sentence｜>"
        ),
        "two_turn": (
            "<｜begin▁of▁sentence｜><｜User｜>What is a normal resting heart rate?"
            "<｜Assistant｜>For adults, 60 to 100 beats per minute.<｜end▁of▁sentence｜>"
            "<｜User｜>Is 55 too low?"
            "<｜Assistant｜><think>\n\n</think>\n\nNot for a fit adult without symptoms.<｜end▁of▁sentence｜>"
        ),
        "gen_single": "<｜begin▁of▁sentence｜><｜User｜>What is a normal resting heart rate?<｜Assistant｜><think>\n",
        "gen_history": (
            "<｜begin▁of▁sentence｜><｜User｜>What is a normal resting heart rate?"
            "<｜Assistant｜>For adults, 60 to 100 beats per minute.<｜end▁of▁sentence｜>"
            "<｜User｜>Is 55 too low?<｜Assistant｜><think>\n"
        ),
    },
    # Llama 2: meta-llama/llama llama/generation.py chat_completion: system merged into the first
    # user message as "<<SYS>>\n{system}\n<</SYS>>\n\n{user}"; answered turns
    # "<s>[INST] {user} [/INST] {answer} </s>", open turn "<s>[INST] {user} [/INST]".
    "llama2": {
        "system_single": (
            "<s>[INST] <<SYS>>\nYou are a medical assistant.\n<</SYS>>\n\n"
            "What is a normal resting heart rate? [/INST] "
            "For adults, 60 to 100 beats per minute. </s>"
        ),
        "two_turn": (
            "<s>[INST] What is a normal resting heart rate? [/INST] "
            "For adults, 60 to 100 beats per minute. </s>"
            "<s>[INST] Is 55 too low? [/INST] Not for a fit adult without symptoms. </s>"
        ),
        "gen_single": "<s>[INST] What is a normal resting heart rate? [/INST]",
        "gen_history": (
            "<s>[INST] What is a normal resting heart rate? [/INST] "
            "For adults, 60 to 100 beats per minute. </s>"
            "<s>[INST] Is 55 too low? [/INST]"
        ),
    },
    # Llama 3: meta-llama/llama3 llama/tokenizer.py ChatFormat: <|begin_of_text|>, then per message
    # "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>", then the assistant
    # header.
    "llama3.0": {
        "system_single": (
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a medical assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
            "What is a normal resting heart rate?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "For adults, 60 to 100 beats per minute.<|eot_id|>"
        ),
        "two_turn": (
            "<|begin_of_text|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
            "What is a normal resting heart rate?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "For adults, 60 to 100 beats per minute.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nIs 55 too low?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "Not for a fit adult without symptoms.<|eot_id|>"
        ),
        "gen_single": (
            "<|begin_of_text|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
            "What is a normal resting heart rate?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "gen_history": (
            "<|begin_of_text|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
            "What is a normal resting heart rate?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "For adults, 60 to 100 beats per minute.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nIs 55 too low?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    },
    # ChatGLM-6B: chatglm-6b chat() — no history: prompt = query; with history:
    # "[Round {i}]\n问：{q}\n答：{a}\n" (i from 0) + "[Round {n}]\n问：{query}\n答："; ptuning main.py
    # prepends source_prefix (= our system message); the tokenizer's
    # build_inputs_with_special_tokens gives prompt + [gMASK] <sop> + answer + <eop>.
    "chatglm": {
        "system_single": "你是一名全科医生。感冒了怎么办？[gMASK]<sop>多喝水，注意休息。<eop>",
        "two_turn": (
            "[Round 0]\n问：感冒了怎么办？\n答：多喝水，注意休息。\n"
            "[Round 1]\n问：需要吃抗生素吗？\n答：[gMASK]<sop>普通感冒不需要抗生素。<eop>"
        ),
        "gen_single": "感冒了怎么办？[gMASK]<sop>",
        "gen_history": (
            "[Round 0]\n问：感冒了怎么办？\n答：多喝水，注意休息。\n"
            "[Round 1]\n问：需要吃抗生素吗？\n答：[gMASK]<sop>"
        ),
    },
    # ChatGLM2-6B: chatglm2-6b tokenization_chatglm.py build_prompt:
    # "[Round {i+1}]\n\n问：{q}\n\n答：{a}\n\n" + "[Round {n+1}]\n\n问：{query}\n\n答："; the tokenizer
    # prefixes [gMASK]sop; ptuning main.py: source_prefix + prompt, then answer + eos.
    "chatglm2": {
        "system_single": "[gMASK]sop你是一名全科医生。[Round 1]\n\n问：感冒了怎么办？\n\n答：多喝水，注意休息。</s>",
        "two_turn": (
            "[gMASK]sop[Round 1]\n\n问：感冒了怎么办？\n\n答：多喝水，注意休息。\n\n"
            "[Round 2]\n\n问：需要吃抗生素吗？\n\n答：普通感冒不需要抗生素。</s>"
        ),
        "gen_single": "[gMASK]sop[Round 1]\n\n问：感冒了怎么办？\n\n答：",
        "gen_history": (
            "[gMASK]sop[Round 1]\n\n问：感冒了怎么办？\n\n答：多喝水，注意休息。\n\n"
            "[Round 2]\n\n问：需要吃抗生素吗？\n\n答："
        ),
    },
    # ChatGLM3-6B: chatglm3-6b tokenizer_config.json chat_template: "[gMASK]sop" then
    # "<|{role}|>\n {content}" per message, prompt "<|assistant|>"; ChatGLM3 finetune_hf.py appends
    # eos after the conversation.
    "chatglm3": {
        "system_single": (
            "[gMASK]sop<|system|>\n 你是一名全科医生。<|user|>\n 感冒了怎么办？"
            "<|assistant|>\n 多喝水，注意休息。</s>"
        ),
        "two_turn": (
            "[gMASK]sop<|user|>\n 感冒了怎么办？<|assistant|>\n 多喝水，注意休息。"
            "<|user|>\n 需要吃抗生素吗？<|assistant|>\n 普通感冒不需要抗生素。</s>"
        ),
        "gen_single": "[gMASK]sop<|user|>\n 感冒了怎么办？<|assistant|>",
        "gen_history": (
            "[gMASK]sop<|user|>\n 感冒了怎么办？<|assistant|>\n 多喝水，注意休息。"
            "<|user|>\n 需要吃抗生素吗？<|assistant|>"
        ),
    },
    # Alpaca: tatsu-lab/stanford_alpaca train.py PROMPT_DICT["prompt_no_input"]
    # "...\n\n### Instruction:\n{instruction}\n\n### Response:" + f"{output}{eos_token}".
    "alpaca": {
        "system_single": (
            "You are a medical assistant.\n\n"
            "### Instruction:\nWhat is a normal resting heart rate?\n\n"
            "### Response:For adults, 60 to 100 beats per minute.</s>"
        ),
        "two_turn": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nWhat is a normal resting heart rate?\n\n"
            "### Response:For adults, 60 to 100 beats per minute.</s>\n\n"
            "### Instruction:\nIs 55 too low?\n\n"
            "### Response:Not for a fit adult without symptoms.</s>"
        ),
        "gen_single": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nWhat is a normal resting heart rate?\n\n"
            "### Response:"
        ),
        "gen_history": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nWhat is a normal resting heart rate?\n\n"
            "### Response:For adults, 60 to 100 beats per minute.</s>\n\n"
            "### Instruction:\nIs 55 too low?\n\n"
            "### Response:"
        ),
    },
    # Vicuna v1.1: lm-sys/FastChat conversation.py "vicuna_v1.1", ADD_COLON_TWO, sep " ",
    # sep2 "</s>": system + " " + "USER: {q} " + "ASSISTANT: {a}</s>" ...; open turn "ASSISTANT:".
    "vicuna": {
        "system_single": (
            "You are a medical assistant. USER: What is a normal resting heart rate? "
            "ASSISTANT: For adults, 60 to 100 beats per minute.</s>"
        ),
        "two_turn": (
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: What is a normal resting heart rate? "
            "ASSISTANT: For adults, 60 to 100 beats per minute.</s>"
            "USER: Is 55 too low? ASSISTANT: Not for a fit adult without symptoms.</s>"
        ),
        "gen_single": (
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: What is a normal resting heart rate? ASSISTANT:"
        ),
        "gen_history": (
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: What is a normal resting heart rate? "
            "ASSISTANT: For adults, 60 to 100 beats per minute.</s>"
            "USER: Is 55 too low? ASSISTANT:"
        ),
    },
    # Baichuan2: generation_utils.py build_chat_input (system text, <reserved_106> user,
    # <reserved_107> assistant, trailing <reserved_107>); fine-tune.py appends one eos at the end;
    # LLaMA-Factory "baichuan2": "<reserved_106>{content}<reserved_107>", efficient_eos.
    "baichuan2": {
        "system_single": "你是一名全科医生。<reserved_106>感冒了怎么办？<reserved_107>多喝水，注意休息。</s>",
        "two_turn": (
            "<reserved_106>感冒了怎么办？<reserved_107>多喝水，注意休息。"
            "<reserved_106>需要吃抗生素吗？<reserved_107>普通感冒不需要抗生素。</s>"
        ),
        "gen_single": "<reserved_106>感冒了怎么办？<reserved_107>",
        "gen_history": (
            "<reserved_106>感冒了怎么办？<reserved_107>多喝水，注意休息。"
            "<reserved_106>需要吃抗生素吗？<reserved_107>"
        ),
    },
    # HuaTuo: SCIR-HI/Huatuo-Llama-Med-Chinese templates/med_template.json
    # "下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n{instruction}\n### 回答:\n" + output + eos
    # (utils/prompter.py, finetune.py add_eos_token).
    "huatuo": {
        "system_single": "你是一名全科医生。\n### 问题:\n感冒了怎么办？\n### 回答:\n多喝水，注意休息。</s>",
        "two_turn": (
            "下面是一个问题，运用医学知识来正确回答提问.\n"
            "### 问题:\n感冒了怎么办？\n### 回答:\n多喝水，注意休息。</s>\n"
            "### 问题:\n需要吃抗生素吗？\n### 回答:\n普通感冒不需要抗生素。</s>"
        ),
        "gen_single": "下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n感冒了怎么办？\n### 回答:\n",
        "gen_history": (
            "下面是一个问题，运用医学知识来正确回答提问.\n"
            "### 问题:\n感冒了怎么办？\n### 回答:\n多喝水，注意休息。</s>\n"
            "### 问题:\n需要吃抗生素吗？\n### 回答:\n"
        ),
    },
}

LLAMA31_SYSTEM = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                  "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
LLAMA3_TURNS = {
    "u1": "<|start_header_id|>user<|end_header_id|>\n\nWhat is a normal resting heart rate?<|eot_id|>",
    "a1": "<|start_header_id|>assistant<|end_header_id|>\n\nFor adults, 60 to 100 beats per minute.<|eot_id|>",
    "u2": "<|start_header_id|>user<|end_header_id|>\n\nIs 55 too low?<|eot_id|>",
    "a2": "<|start_header_id|>assistant<|end_header_id|>\n\nNot for a fit adult without symptoms.<|eot_id|>",
    "gen": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}

GOLDEN.update({
    # Llama 3.1+: meta-llama/Llama-3.1-8B-Instruct chat_template: the system header is always
    # written, with "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" before
    # the (possibly empty) system message; then Llama 3 turns.
    "llama3": {
        "system_single": LLAMA31_SYSTEM + "You are a medical assistant.<|eot_id|>" + LLAMA3_TURNS["u1"] + LLAMA3_TURNS["a1"],
        "two_turn": LLAMA31_SYSTEM + "<|eot_id|>" + "".join(LLAMA3_TURNS[k] for k in ("u1", "a1", "u2", "a2")),
        "gen_single": LLAMA31_SYSTEM + "<|eot_id|>" + LLAMA3_TURNS["u1"] + LLAMA3_TURNS["gen"],
        "gen_history": LLAMA31_SYSTEM + "<|eot_id|>" + "".join(LLAMA3_TURNS[k] for k in ("u1", "a1", "u2", "gen")),
    },
    # GLM-4: THUDM/glm-4-9b-chat: "[gMASK]<sop>", then <|role|> + "\n" + content per message,
    # generation prompt <|assistant|>; medtune writes eos after the final reply (GLM-4 finetune.py).
    "glm4": {
        "system_single": ("[gMASK]<sop><|system|>\nYou are a medical assistant.<|user|>\n"
                          "What is a normal resting heart rate?<|assistant|>\nFor adults, 60 to 100 beats per minute.</s>"),
        "two_turn": ("[gMASK]<sop><|user|>\nWhat is a normal resting heart rate?<|assistant|>\n"
                     "For adults, 60 to 100 beats per minute.<|user|>\nIs 55 too low?<|assistant|>\n"
                     "Not for a fit adult without symptoms.</s>"),
        "gen_single": "[gMASK]<sop><|user|>\nWhat is a normal resting heart rate?<|assistant|>",
        "gen_history": ("[gMASK]<sop><|user|>\nWhat is a normal resting heart rate?<|assistant|>\n"
                        "For adults, 60 to 100 beats per minute.<|user|>\nIs 55 too low?<|assistant|>"),
    },
    # Gemma 3: google/gemma-3-4b-it: bos, <start_of_turn>user|model\n ... <end_of_turn>\n, the
    # system text + "\n\n" opening the first user turn.
    "gemma": {
        "system_single": ("<s><start_of_turn>user\nYou are a medical assistant.\n\nWhat is a normal resting heart rate?"
                          "<end_of_turn>\n<start_of_turn>model\nFor adults, 60 to 100 beats per minute.<end_of_turn>\n"),
        "two_turn": ("<s><start_of_turn>user\nWhat is a normal resting heart rate?<end_of_turn>\n"
                     "<start_of_turn>model\nFor adults, 60 to 100 beats per minute.<end_of_turn>\n"
                     "<start_of_turn>user\nIs 55 too low?<end_of_turn>\n"
                     "<start_of_turn>model\nNot for a fit adult without symptoms.<end_of_turn>\n"),
        "gen_single": "<s><start_of_turn>user\nWhat is a normal resting heart rate?<end_of_turn>\n<start_of_turn>model\n",
        "gen_history": ("<s><start_of_turn>user\nWhat is a normal resting heart rate?<end_of_turn>\n"
                        "<start_of_turn>model\nFor adults, 60 to 100 beats per minute.<end_of_turn>\n"
                        "<start_of_turn>user\nIs 55 too low?<end_of_turn>\n<start_of_turn>model\n"),
    },
    # Mistral v3: mistralai/Mistral-7B-Instruct-v0.3: bos, "[INST] " + text + "[/INST]", " " + reply
    # + eos; the system message in the last user turn.
    "mistral": {
        "system_single": ("<s>[INST] You are a medical assistant.\n\nWhat is a normal resting heart rate?[/INST]"
                          " For adults, 60 to 100 beats per minute.</s>"),
        "two_turn": ("<s>[INST] What is a normal resting heart rate?[/INST] For adults, 60 to 100 beats per minute.</s>"
                     "[INST] Is 55 too low?[/INST] Not for a fit adult without symptoms.</s>"),
        "gen_single": "<s>[INST] What is a normal resting heart rate?[/INST]",
        "gen_history": ("<s>[INST] What is a normal resting heart rate?[/INST] For adults, 60 to 100 beats per minute.</s>"
                        "[INST] Is 55 too low?[/INST]"),
    },
    # Phi-3: microsoft/Phi-3-mini-4k-instruct: <|role|>\n + content + <|end|>\n, eos after a
    # conversation, generation prompt <|assistant|>\n.
    "phi3": {
        "system_single": ("<|system|>\nYou are a medical assistant.<|end|>\n<|user|>\nWhat is a normal resting heart rate?"
                          "<|end|>\n<|assistant|>\nFor adults, 60 to 100 beats per minute.<|end|>\n</s>"),
        "two_turn": ("<|user|>\nWhat is a normal resting heart rate?<|end|>\n<|assistant|>\n"
                     "For adults, 60 to 100 beats per minute.<|end|>\n<|user|>\nIs 55 too low?<|end|>\n"
                     "<|assistant|>\nNot for a fit adult without symptoms.<|end|>\n</s>"),
        "gen_single": "<|user|>\nWhat is a normal resting heart rate?<|end|>\n<|assistant|>\n",
        "gen_history": ("<|user|>\nWhat is a normal resting heart rate?<|end|>\n<|assistant|>\n"
                        "For adults, 60 to 100 beats per minute.<|end|>\n<|user|>\nIs 55 too low?<|end|>\n<|assistant|>\n"),
    },
    # Phi-4: microsoft/phi-4: <|im_start|>role<|im_sep|> + content + <|im_end|>, no newlines.
    "phi4": {
        "system_single": ("<|im_start|>system<|im_sep|>You are a medical assistant.<|im_end|>"
                          "<|im_start|>user<|im_sep|>What is a normal resting heart rate?<|im_end|>"
                          "<|im_start|>assistant<|im_sep|>For adults, 60 to 100 beats per minute.<|im_end|>"),
        "two_turn": ("<|im_start|>user<|im_sep|>What is a normal resting heart rate?<|im_end|>"
                     "<|im_start|>assistant<|im_sep|>For adults, 60 to 100 beats per minute.<|im_end|>"
                     "<|im_start|>user<|im_sep|>Is 55 too low?<|im_end|>"
                     "<|im_start|>assistant<|im_sep|>Not for a fit adult without symptoms.<|im_end|>"),
        "gen_single": "<|im_start|>user<|im_sep|>What is a normal resting heart rate?<|im_end|><|im_start|>assistant<|im_sep|>",
        "gen_history": ("<|im_start|>user<|im_sep|>What is a normal resting heart rate?<|im_end|>"
                        "<|im_start|>assistant<|im_sep|>For adults, 60 to 100 beats per minute.<|im_end|>"
                        "<|im_start|>user<|im_sep|>Is 55 too low?<|im_end|><|im_start|>assistant<|im_sep|>"),
    },
    # Yi-1.5: 01-ai/Yi-1.5-9B-Chat: the system text bare, the assistant header after every user turn.
    "yi": {
        "system_single": ("You are a medical assistant.<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n"
                          "<|im_start|>assistant\nFor adults, 60 to 100 beats per minute.<|im_end|>\n"),
        "two_turn": ("<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n<|im_start|>assistant\n"
                     "For adults, 60 to 100 beats per minute.<|im_end|>\n<|im_start|>user\nIs 55 too low?<|im_end|>\n"
                     "<|im_start|>assistant\nNot for a fit adult without symptoms.<|im_end|>\n"),
        "gen_single": "<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n<|im_start|>assistant\n",
        "gen_history": ("<|im_start|>user\nWhat is a normal resting heart rate?<|im_end|>\n<|im_start|>assistant\n"
                        "For adults, 60 to 100 beats per minute.<|im_end|>\n<|im_start|>user\nIs 55 too low?<|im_end|>\n"
                        "<|im_start|>assistant\n"),
    },
})

# What each template marks as learned in conversation(name) (system + two answered turns): each
# reply with its end-of-turn marker, as decoded from the assistant mask.
LEARNED = {
    "chatml": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    "qwen": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    "qwen3": [A1 + "<|im_end|>", "<think>\n\n</think>\n\n" + A2 + "<|im_end|>"],
    "deepseek-r1": [A1 + "<｜end▁of▁sentence｜>", "\n</think>\n\n" + A2 + "<｜end▁of▁sentence｜>"],
    "llama2": [" " + A1 + " </s>", " " + A2 + " </s>"],
    "llama3": [A1 + "<|eot_id|>", A2 + "<|eot_id|>"],
    "llama3.0": [A1 + "<|eot_id|>", A2 + "<|eot_id|>"],
    "glm4": ["\n" + A1 + "<|user|>", "\n" + A2 + "</s>"],
    "gemma": [A1 + "<end_of_turn>", A2 + "<end_of_turn>"],
    "mistral": [" " + A1 + "</s>", " " + A2 + "</s>"],
    "phi3": [A1 + "<|end|>", A2 + "<|end|>"],
    "phi4": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    "yi": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    # ChatGLM-6B: earlier replies are history inside the bidirectional prompt; only the last one
    # is learned.
    "chatglm": [ZH_A2 + "<eop>"],
    # No end marker between rounds in build_prompt; eos after the final reply.
    "chatglm2": [ZH_A1, ZH_A2 + "</s>"],
    # finetune_hf.py: "\n" + reply + the following role token (or the final eos).
    "chatglm3": ["\n " + ZH_A1 + "<|user|>", "\n " + ZH_A2 + "</s>"],
    "alpaca": [A1 + "</s>", A2 + "</s>"],
    "vicuna": [" " + A1 + "</s>", " " + A2 + "</s>"],
    "baichuan2": [ZH_A1, ZH_A2 + "</s>"],
    "huatuo": [ZH_A1 + "</s>", ZH_A2 + "</s>"],
}


def test_every_template_has_goldens():
    assert set(GOLDEN) == set(TEMPLATE_NAMES) == set(LEARNED)


def test_template_files_match_names():
    folder = files("medtune").joinpath("assets", "templates")
    found = {p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja")}
    assert found == set(TEMPLATE_NAMES)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_system_single_turn(name):
    system, u1, a1, _, _ = conversation(name)
    assert render_named(name, [system, u1, a1]) == GOLDEN[name]["system_single"]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_two_turns(name):
    _, u1, a1, u2, a2 = conversation(name)
    assert render_named(name, [u1, a1, u2, a2]) == GOLDEN[name]["two_turn"]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_generation_prompt(name):
    _, u1, a1, u2, _ = conversation(name)
    assert render_named(name, [u1], add_generation_prompt=True) == GOLDEN[name]["gen_single"]
    with_history = render_named(name, [u1, a1, u2], add_generation_prompt=True)
    assert with_history == GOLDEN[name]["gen_history"]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_learned_span_starts_where_generation_prompt_ends(name):
    """prompt + what the model generates == the full conversation, and the last generation block
    starts exactly at the end of the generation prompt."""
    from transformers.utils.chat_template_utils import render_jinja_template

    bos, eos = bos_eos(name)
    _, u1, a1, u2, a2 = conversation(name)
    prompt = render_named(name, [u1, a1, u2], add_generation_prompt=True)
    (full,), (indices,) = render_jinja_template(
        conversations=[[u1, a1, u2, a2]], chat_template=template_source(name),
        return_assistant_tokens_mask=True, bos_token=bos, eos_token=eos,
    )
    assert full.startswith(prompt)
    start, end = indices[-1]
    assert start == len(prompt)
    assert full[start:end] == LEARNED[name][-1]


def test_alpaca_input_uses_prompt_input():
    # tatsu-lab/stanford_alpaca train.py PROMPT_DICT["prompt_input"] + output + eos.
    messages = [
        {"role": "user", "content": "Classify the blood pressure.", "input": "150/95 mmHg"},
        {"role": "assistant", "content": "Stage 2 hypertension."},
    ]
    assert render_named("alpaca", messages) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nClassify the blood pressure.\n\n### Input:\n150/95 mmHg\n\n"
        "### Response:Stage 2 hypertension.</s>"
    )


def test_llama_templates_strip_content():
    # llama/generation.py strips every message; llama3 ChatFormat strips content.
    messages = [
        {"role": "user", "content": "  Hi \n"},
        {"role": "assistant", "content": "\nHello  "},
    ]
    assert render_named("llama2", messages) == "<s>[INST] Hi [/INST] Hello </s>"
    assert render_named("llama3.0", messages) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
    )
    assert render_named("llama3", messages).endswith(
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
    )


def test_unknown_template_name():
    with pytest.raises(MedtuneError, match=r"unknown template 'chatm' \(did you mean 'chatml'\?\)"):
        template_source("chatm")
    with pytest.raises(MedtuneError, match="unknown template 'lama3'"):
        stop_strings("lama3")
    with pytest.raises(MedtuneError, match=r"unknown template 'zzz' \(choose from alpaca, "):
        special_tokens("zzz")


def test_stop_strings_and_special_tokens():
    assert {n: stop_strings(n) for n in TEMPLATE_NAMES} == {
        "chatml": ["<|im_end|>"],
        "qwen": ["<|im_end|>"],
        "qwen3": ["<|im_end|>"],
        "deepseek-r1": [],
        "llama2": [],
        "llama3": ["<|eot_id|>"],
        "llama3.0": ["<|eot_id|>"],
        "chatglm": [],
        "chatglm2": [],
        "chatglm3": ["<|user|>", "<|observation|>"],
        "alpaca": [],
        "vicuna": [],
        "baichuan2": [],
        "huatuo": [],
        "glm4": ["<|user|>", "<|observation|>"],
        "gemma": ["<end_of_turn>"],
        "mistral": [],
        "phi3": ["<|end|>"],
        "phi4": ["<|im_end|>"],
        "yi": ["<|im_end|>"],
    }
    assert {n: special_tokens(n) for n in TEMPLATE_NAMES} == {
        "chatml": ["<|im_start|>", "<|im_end|>"],
        "qwen": ["<|im_start|>", "<|im_end|>"],
        "qwen3": ["<|im_start|>", "<|im_end|>"],
        "deepseek-r1": ["<｜User｜>", "<｜Assistant｜>"],
        "llama2": [],
        "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "llama3.0": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "chatglm": ["[gMASK]", "<sop>"],
        "chatglm2": ["[gMASK]"],
        "chatglm3": ["[gMASK]", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "alpaca": [],
        "vicuna": [],
        "baichuan2": ["<reserved_106>", "<reserved_107>"],
        "huatuo": [],
        "glm4": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "gemma": ["<start_of_turn>", "<end_of_turn>"],
        "mistral": ["[INST]", "[/INST]"],
        "phi3": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "phi4": ["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
        "yi": ["<|im_start|>", "<|im_end|>"],
    }
    stop_strings("chatml").append("x")  # callers get a copy
    assert stop_strings("chatml") == ["<|im_end|>"]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_source_is_documented(name):
    source = template_source(name)
    assert source.startswith("{#-")
    assert "Source" in source.split("-#}", 1)[0]
    assert "{%- generation -%}" in source


def _char_tokenizer(name, text):
    """A fast tokenizer with one token per character of ``text`` plus the template's special
    tokens, carrying ``template_source(name)`` as its chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(sorted(set(text)))}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    bos, eos = bos_eos(name)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="[UNK]"
    )
    tok.add_special_tokens({"additional_special_tokens": special_tokens(name)})
    tok.chat_template = template_source(name)
    return tok


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_assistant_mask_covers_replies_and_end_markers(name):
    messages = conversation(name)
    text = render_named(name, messages)
    tok = _char_tokenizer(name, text)
    for token in special_tokens(name) + [tok.eos_token]:
        if token in text:
            assert len(tok.encode(token, add_special_tokens=False)) == 1

    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == text  # same renderer as render()

    runs, current = [], []
    for token_id, learned in zip(ids, mask):
        if learned:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    decoded = [tok.decode(run, clean_up_tokenization_spaces=False) for run in runs]
    assert decoded == LEARNED[name]
