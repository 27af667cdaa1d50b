"""Where a cold start goes: every graph torch.compile builds for a config, and why.

    python scripts/compile_census.py pendulum            # an empty inductor cache, as a new machine
    python scripts/compile_census.py walker_walk_proprio --steps 2
    python scripts/compile_census.py smoke --backend eager   # dynamo's graphs only, no C++

Builds the agent the config describes with compile on, on an empty inductor cache (a new
temporary folder, so nothing compiled earlier is reused), runs --steps training steps and
one act on a random batch, and prints one line per graph dynamo built: the function, the
seconds it took (forward with its backward when that was compiled at once, or the backward
alone when it came later), and what made it a new graph when it was not the function's
first (the guard that failed for the graphs before it). Then the seconds of the first
training step, of the first act, and of a warm step. Each graph is C++ the compiler builds
once per machine: fewer kinds of input to one function means fewer graphs and a shorter
first run. Run it on an idle machine.
"""

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Census(logging.Handler):
    """Collects dynamo's log lines: which function each graph traces, and why it is new."""

    def __init__(self):
        super().__init__()
        self.functions = {}  # frame id -> function name ("forward (networks.py:173)")
        self.reasons = {}  # compile id "0/3" -> the guard that failed for "0/2" first

    def emit(self, record):
        message = record.getMessage()
        traced = re.search(r"start tracing (\S+) \S*?([^/\s]+\.py:\d+)", message)
        if traced:
            self.functions[self.current] = f"{traced[1]} ({traced[2]})"
        if "triggered by the following guard failure" in message:
            # One line per earlier graph, the newest first: its failed guard.
            failures = message.split("guard failure(s):")[-1].strip().splitlines()
            self.reasons[self.current] = failures[0].strip(" -") if failures else "?"

    @property
    def current(self):
        import torch._guards

        compile_id = torch._guards.CompileContext.current_compile_id()
        return str(compile_id) if compile_id is not None else "?"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="pendulum")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    parser.add_argument(
        "--backend", default="inductor", help="torch.compile backend (eager: no C++)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="census_"))

    import torch
    import torch._dynamo.callback as callback

    from natural_dreamer.bench import configured_agent, host
    from natural_dreamer.config import load_config
    from natural_dreamer.fastpath import use_heap_allocator

    if args.backend != "inductor":  # every torch.compile the agent makes, with this backend
        compile_with = torch.compile
        torch.compile = lambda *a, **k: compile_with(*a, **{**k, "backend": args.backend})
    # dynamo's log lines go to the census, not to the terminal.
    torch._logging.set_logs(dynamo=logging.INFO, recompiles=True)
    for name in [*logging.root.manager.loggerDict, "torch"]:
        logger = logging.getLogger(name)
        if name.startswith("torch") and not isinstance(logger, logging.PlaceHolder):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
    census = Census()
    logging.getLogger("torch._dynamo").addHandler(census)

    graphs, started = [], {}

    def start(event):
        started[event.compile_id] = time.perf_counter()

    def end(event):
        seconds = time.perf_counter() - started.pop(event.compile_id)
        graphs.append((str(event.compile_id), event.callback_trigger.name, seconds))

    callback.callback_handler.register_start_callback(start)
    callback.callback_handler.register_end_callback(end)

    use_heap_allocator()
    config = load_config(args.config, {"compile": True})
    agent, batch = configured_agent(config)
    print(f"{host()}; {args.config}: precision {agent.precision_label}, backend {args.backend}")
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    print(f"inductor cache {cache}, {torch.get_num_threads()} thread(s)")
    times = []
    for _ in range(args.steps):
        begin = time.perf_counter()
        agent.train_step(batch)
        times.append(time.perf_counter() - begin)
    obs = {key: batch[key][:, 0] for key in agent.world_model.obs_keys}
    obs["is_first"] = batch["is_first"][:, 0]
    begin = time.perf_counter()
    agent.act(obs, agent.initial_state(obs["is_first"].shape[0]))
    act = time.perf_counter() - begin

    # A backward compiled later has no "start tracing" line of its own: its frame's name.
    by_frame = {key.split("/")[0]: name for key, name in census.functions.items()}
    print(f"{'graph':>6}  {'s':>6}  function, and what made it a new graph")
    for compile_id, trigger, seconds in graphs:
        name = census.functions.get(compile_id) or by_frame.get(compile_id.split("/")[0], "?")
        if trigger == "LAZY_BACKWARD":
            what = "backward, compiled when first run"
        else:
            what = census.reasons.get(compile_id, "first graph of this function")
        print(f"{compile_id:>6}  {seconds:6.1f}  {name}: {what}")
    dynamo = sum(1 for _, trigger, _ in graphs if trigger == "DYNAMO")
    print(f"{dynamo} graphs traced, {sum(s for *_, s in graphs):.0f} s building graphs")
    print(f"first training step {times[0]:.1f} s, first act {act:.1f} s", end="")
    print(f", a warm step {min(times[1:]):.2f} s" if len(times) > 1 else "")


if __name__ == "__main__":
    main()
