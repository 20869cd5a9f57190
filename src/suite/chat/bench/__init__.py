"""Chat benchmarks (brief section 7), each `run_*() -> dict` with the load average and CPU time:

- B1 `pipeline.run_pipeline`: WebSocket pipeline with the scripted provider (memory and Redis brokers);
- B2 `model.run_model`: the local model per installed runtime (load, TTFT, tokens/s, CPU/token, loop lag);
- B3 `e2e.run_e2e`: end to end with the local model vs a direct provider call;
- B4 `provider.run_provider`: the `openai` provider vs raw httpx SSE against our own `/v1`;
- B5 `slow.run_slow`: 19 sockets with and without one that never reads.

`suite chat bench ...` and `benchmarks/bench_chat.py` call these; nothing here is imported by the server.
"""
