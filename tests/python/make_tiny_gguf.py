"""Writes a tiny random-weight Llama model as a GGUF file that llama.cpp loads and generates from.

The llama.cpp tests (tests/llamacpp_backend.rs) need a real engine serving a real model, and no
weights can be downloaded, so the test writes this one itself with the `gguf` package (the
writer llama.cpp's own conversion scripts use). It is a plain "llama" architecture: two
layers, a 64-wide hidden state, four heads, float32 tensors, and a small byte-level
SentencePiece ("llama") vocabulary: <unk>, <s>, </s>, the 256 <0xNN> byte tokens (so any text
tokenizes), printable ASCII characters and a word-start marker per lowercase letter.

The weights are random (numpy, seeded: the same seed writes the same bytes), shaped so that
generation is useful to a test: the output projection is large enough that sampling is peaked
and gives control and byte tokens no logit mass (their rows are zero while every ordinary
token's is random, so their logit, 0, is far below the best one's), so the model never ends
early on </s> and its text is always printable ASCII. A request's length is then set by its
max_tokens alone.

Usage: make_tiny_gguf.py OUT.gguf [--seed N]
"""

import argparse
import sys

import numpy as np
import gguf

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX_TRAIN = 4096
HEAD_DIM = N_EMBD // N_HEAD

# A chat template is written so llama-cpp-python's server formats chat requests from the
# model's own metadata instead of guessing a format; it is short to keep prompts short.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

UNK, BOS, EOS = 0, 1, 2


def vocabulary():
    """Returns (tokens, scores, types) of the byte-level SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    # Ordinary pieces. SentencePiece marks a word start with U+2581; llama.cpp's SPM
    # tokenizer merges pieces by score, so longer pieces score higher.
    pieces = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    for piece in pieces:
        tokens.append(piece)
        scores.append(-1.0 if len(piece) == 1 else -0.5)
        types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="path of the .gguf file to write")
    parser.add_argument("--seed", type=int, default=15, help="weights' random seed")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("dujiang-tiny-random-llama")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows, columns) = (out, in); the writer stores ggml's reversed order.
    w.add_tensor("token_embd.weight", normal((n_vocab, N_EMBD), 0.5))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", normal((N_EMBD, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal((HEAD_DIM * N_HEAD_KV, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal((HEAD_DIM * N_HEAD_KV, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal((N_EMBD, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal((N_FF, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal((N_FF, N_EMBD), 0.1))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal((N_EMBD, N_FF), 0.1))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = normal((n_vocab, N_EMBD), 1.0)
    for i, t in enumerate(types):
        if t != gguf.TokenType.NORMAL:
            output[i, :] = 0.0
    w.add_tensor("output.weight", output)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
