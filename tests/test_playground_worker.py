"""The playground worker (`python -m worker job` of kind playground) on a real trained checkpoint: greedy columns
equal `mlx_lm generate`, columns generate at the same time, a bad column fails its generation only, and the model
is released when idle or on request. Real SQLite, real worker processes, the tiny model."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT_DIR, TERMINAL, base_env
from sqlmodel import Session

from app.contract.paths import checkpoint_files, ensure_checkpoint_adapter_dir, run_dir
from app.contract.settings import Settings
from app.db import make_engine
from app.tables import Generation, GenerationColumn, Job, Run

pytestmark = pytest.mark.xdist_group("checkpoint_use")

PROMPT = "Hi, I was charged twice for my order this month. Can you help me?"
MAX_TOKENS = 16
MISSING_RUN = 999  # a run on the same base model whose checkpoint file is gone
# Checkpoints of other layouts, as other runs may have them: (fine_tune_type, num_layers, lora_parameters)
LAYOUTS: dict[int, tuple[str, int, dict[str, Any]]] = {
    901: ("lora", 2, {"rank": 4, "scale": 20.0, "dropout": 0.0}),
    902: ("lora", 4, {"rank": 8, "scale": 10.0, "dropout": 0.0,
                      "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]}),
    903: ("dora", 3, {"rank": 4, "scale": 20.0, "dropout": 0.0}),
    904: ("full", 1, {"rank": 8, "scale": 20.0, "dropout": 0.0}),
}
LAYOUT_ITERATION = 10
MISFIT_RUN = 905  # rank 4 weights under an adapter_config of rank 8: not this model's adapter

# Writes a checkpoint (random weights, seeded) of each layout into the adapters folder, then prints what mlx_lm
# answers greedily with it (mlx_lm.utils.load with adapter_path, as `mlx_lm generate --adapter-path` does), and
# without any adapter under "0".
REFERENCE_SCRIPT = r"""
import json, sys
from app.contract.settings import Settings
from worker.blas import route_blas
settings = Settings()
route_blas(settings.compiled_cache_dir, settings.openblas, settings.blas_threads)
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.generate import generate
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load
from app.contract.paths import checkpoint_files, ensure_checkpoint_adapter_dir, run_dir, run_dir

model_path, prompt, max_tokens, iteration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
layouts = json.loads(sys.argv[5])

def answer(model, tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return generate(model, tokenizer, tokenizer.encode(text, add_special_tokens=False), max_tokens=max_tokens)

texts = {}
for run_id, (fine_tune_type, num_layers, params) in layouts.items():
    model, tokenizer = load(model_path)
    mx.random.seed(int(run_id))
    if fine_tune_type == "full":
        last = len(model.layers) - 1
        weights = {f"model.layers.{last}.{k}": v * (1 + 2.0 * mx.random.normal(v.shape))
                   for k, v in tree_flatten(model.layers[last].parameters())}
    else:
        linear_to_lora_layers(model, num_layers, params, use_dora=fine_tune_type == "dora")
        weights = {k: v * (1 + mx.random.uniform(-0.5, 0.5, v.shape)) if k.endswith(".m")
                   else 0.1 * mx.random.normal(v.shape)
                   for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
    folder = run_dir(settings, int(run_id))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": fine_tune_type, "num_layers": num_layers, "lora_parameters": params}))
    mx.save_safetensors(str(checkpoint_files(settings, int(run_id), iteration)[0]), weights)
    texts[run_id] = answer(*load(model_path, adapter_path=str(ensure_checkpoint_adapter_dir(settings, int(run_id),
                                                                                              iteration))))
texts["0"] = answer(*load(model_path))
print(json.dumps(texts))
"""


def worker_env(root: Path, adapters: Path) -> dict[str, str]:
    return base_env(LORABOARD_DB_PATH=str(root / "loraboard.db"), LORABOARD_ADAPTERS_DIR=str(adapters))


def make_db(root: Path, adapters: Path, lora_run: dict[str, Any]) -> Session:
    """A database with the trained run, the runs of other layouts and a run whose checkpoint is gone; the trained
    run's folder is copied into this test's own adapters folder."""
    settings = Settings(db_path=root / "loraboard.db", adapters_dir=adapters)
    source = Settings(adapters_dir=lora_run["server"].root / "adapters")
    shutil.copytree(run_dir(source, lora_run["run_id"]), run_dir(settings, lora_run["run_id"]))
    session = Session(make_engine(settings.database_path))
    config = lora_run["server"].get(f"/api/runs/{lora_run['run_id']}")["config"]
    session.add(Run(id=lora_run["run_id"], name="lora", status="completed", config_json=json.dumps(config)))
    for run_id in (MISSING_RUN, MISFIT_RUN, *LAYOUTS):
        session.add(Run(id=run_id, name=f"run {run_id}", status="completed", config_json=json.dumps(config)))
    session.commit()
    return session


SAMPLED = {"temperature": 2.0, "seed": 7}  # sampled generations: far from greedy, the same seed for every column


def reference_answers(root: Path, adapters: Path, model: str) -> dict[int, str]:
    """mlx_lm's greedy answers with a checkpoint of each layout (written here), and with none (key 0)."""
    result = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, model, PROMPT, str(MAX_TOKENS), str(LAYOUT_ITERATION),
         json.dumps(LAYOUTS)], cwd=PROJECT_DIR, env=worker_env(root, adapters), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr
    return {int(key): text for key, text in json.loads(result.stdout).items()}


def queue(session: Session, model: str, columns: list[tuple[int, int] | None], max_tokens: int = MAX_TOKENS,
          **settings: Any) -> int:
    request = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.0,
               "top_p": 1.0, "seed": None, **settings}
    generation = Generation(model=model, request_json=json.dumps(request))
    session.add(generation)
    session.flush()
    assert generation.id is not None
    for index, column in enumerate(columns):
        run_id, iteration = column if column is not None else (None, None)
        session.add(GenerationColumn(generation_id=generation.id, column_index=index, run_id=run_id,
                                     iteration=iteration))
    session.commit()
    return generation.id


def add_job(session: Session, idle_s: float) -> int:
    job = Job(kind="playground", params_json=json.dumps({"idle_s": idle_s}))
    session.add(job)
    session.commit()
    assert job.id is not None
    return job.id


def start_worker(root: Path, adapters: Path, job_id: int) -> subprocess.Popen[bytes]:
    log = (root / f"worker-{job_id}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "worker", "job", "--job-id", str(job_id)], cwd=PROJECT_DIR,
                            env=worker_env(root, adapters), stdout=log, stderr=subprocess.STDOUT)


def rows(db: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_job(db: Path, job_id: int, process: subprocess.Popen[bytes], timeout: float = 300) -> sqlite3.Row:
    process.wait(timeout=timeout)
    job = rows(db, "SELECT * FROM job WHERE id = ?", job_id)[0]
    assert job["status"] in TERMINAL, dict(job)
    return job


@pytest.fixture(scope="module")
def answered(lora_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One worker answers ten queued generations (a checkpoint alone; base and checkpoint side by side; the base
    alone; a deleted checkpoint; an adapter that does not fit beside the base; both checkpoints around the base;
    four checkpoints of other layouts; three sampled with a seed), then releases the model after 1 idle second."""
    root = tmp_path_factory.mktemp("playground")
    adapters = root / "adapters"
    session = make_db(root, adapters, lora_run)
    run_id, (first, final) = lora_run["run_id"], lora_run["iterations"]
    model = lora_run["model"]
    references = reference_answers(root, adapters, model)
    settings = Settings(db_path=root / "loraboard.db", adapters_dir=adapters)
    run_dir(settings, MISFIT_RUN).mkdir()
    shutil.copy(run_dir(settings, 902) / "adapter_config.json", run_dir(settings, MISFIT_RUN))
    shutil.copy(checkpoint_files(settings, 901, LAYOUT_ITERATION)[0],
                checkpoint_files(settings, MISFIT_RUN, LAYOUT_ITERATION)[0])
    ids = {
        "alone": queue(session, model, [(run_id, final)]),
        "pair": queue(session, model, [None, (run_id, final)]),
        "base": queue(session, model, [None]),
        "missing": queue(session, model, [(MISSING_RUN, final)]),
        "misfit": queue(session, model, [None, (MISFIT_RUN, LAYOUT_ITERATION)]),
        "trio": queue(session, model, [(run_id, first), None, (run_id, final)]),
        "layouts": queue(session, model, [(run_id, LAYOUT_ITERATION) for run_id in LAYOUTS]),
        **{name: queue(session, model, cols, max_tokens=24, **SAMPLED) for name, cols in (
            ("sampled", [(run_id, final)]), ("sampled_pair", [None, (run_id, final)]),
            ("sampled_again", [(run_id, final)]))},
    }
    job_id = add_job(session, idle_s=1.0)
    session.close()
    job = wait_job(root / "loraboard.db", job_id, start_worker(root, adapters, job_id))
    return {"db": root / "loraboard.db", "root": root, "adapters": adapters, "ids": ids, "job": job,
            "job_id": job_id, "run_id": run_id, "final": final, "model": model, "references": references}


def columns(answered: dict[str, Any], name: str) -> list[sqlite3.Row]:
    return rows(answered["db"], "SELECT * FROM generationcolumn WHERE generation_id = ? ORDER BY column_index",
                answered["ids"][name])


def tokens(answered: dict[str, Any], name: str) -> list[sqlite3.Row]:
    return rows(answered["db"], "SELECT * FROM generationtoken WHERE generation_id = ? ORDER BY id",
                answered["ids"][name])


def mlx_lm_generate(model: str, adapter_path: Path) -> str:
    """The text `python -m mlx_lm generate` prints between its two ========== lines."""
    result = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", model, "--adapter-path", str(adapter_path),
         "--prompt", PROMPT, "--temp", "0", "--max-tokens", str(MAX_TOKENS)],
        cwd=PROJECT_DIR, env=base_env(), capture_output=True, text=True, timeout=300, check=True)
    parts = result.stdout.split("==========\n")
    assert len(parts) >= 3, result.stdout
    return parts[1].removesuffix("\n")


def test_checkpoint_column_equals_mlx_lm_generate(answered: dict[str, Any]) -> None:
    settings = Settings(db_path=answered["db"], adapters_dir=answered["adapters"])
    folder = ensure_checkpoint_adapter_dir(settings, answered["run_id"], answered["final"])
    expected = mlx_lm_generate(answered["model"], folder)
    (alone,) = columns(answered, "alone")
    assert alone["done"] and alone["text"] == expected
    assert alone["tokens"] == MAX_TOKENS and alone["finish_reason"] == "length"
    assert columns(answered, "pair")[1]["text"] == expected  # the same checkpoint beside the base model
    streamed = tokens(answered, "alone")
    assert [row["seq"] for row in streamed] == list(range(MAX_TOKENS))
    assert "".join(row["text"] for row in streamed) == expected
    assert alone["prompt_tokens"] > 0 and alone["first_token_s"] > 0 and alone["tokens_per_second"] > 0


def test_base_column_differs_from_the_checkpoint(answered: dict[str, Any]) -> None:
    base, checkpoint = columns(answered, "pair")
    assert base["run_id"] is None and base["done"] and checkpoint["done"]
    assert base["text"] and base["text"] != checkpoint["text"]
    assert base["prompt_tokens"] == checkpoint["prompt_tokens"]
    assert base["text"] == columns(answered, "base")[0]["text"]  # no adapter left in the base model's way


def test_columns_beside_each_other_answer_as_alone(answered: dict[str, Any]) -> None:
    """Two checkpoints of different iterations around the base: each column's adapter is in place for its own
    steps (generate_step builds a column's next token when that column is advanced)."""
    earlier, base, final = columns(answered, "trio")
    assert earlier["done"] and earlier["run_id"] == answered["run_id"]
    assert base["text"] == columns(answered, "base")[0]["text"]
    assert final["text"] == columns(answered, "alone")[0]["text"]
    assert earlier["text"] != final["text"]


def test_a_sampled_column_with_a_seed_answers_as_it_does_alone(answered: dict[str, Any]) -> None:
    for name in ("sampled", "sampled_pair", "sampled_again"):
        (generation,) = rows(answered["db"], "SELECT * FROM generation WHERE id = ?", answered["ids"][name])
        assert generation["status"] == "completed", dict(generation)
    alone = columns(answered, "sampled")[0]["text"]
    assert alone
    assert columns(answered, "sampled_again")[0]["text"] == alone  # the same seed, the same answer
    assert columns(answered, "sampled_pair")[1]["text"] == alone  # each column draws from its own seeded stream
    assert not columns(answered, "alone")[0]["text"].startswith(alone)  # temperature 2: not the greedy answer


def test_two_columns_generate_at_the_same_time(answered: dict[str, Any]) -> None:
    streamed = tokens(answered, "pair")
    counts = {column["column_index"]: column["tokens"] for column in columns(answered, "pair")}
    for index in (0, 1):
        texts = [row["text"] for row in streamed if row["column_index"] == index]
        assert len(texts) == counts[index]
        assert "".join(texts) == columns(answered, "pair")[index]["text"]
    # round-robin, one token each: in id order the rows alternate (a column's last row comes with the one
    # before it, when the column ends)
    order = [row["column_index"] for row in streamed if row["seq"] < counts[row["column_index"]] - 1]
    shorter = min(counts.values()) - 1
    assert order[: 2 * shorter] == [0, 1] * shorter, order


def test_checkpoints_of_other_layouts_side_by_side_equal_mlx_lm(answered: dict[str, Any]) -> None:
    """LoRA of another rank, keys and layer count, DoRA and a full fine-tune, four columns swapped into the one
    model round-robin: each column answers as mlx_lm does with that checkpoint alone."""
    references = answered["references"]
    assert len({*references.values()}) == len(references)  # every checkpoint changes the answer
    for column in columns(answered, "layouts"):
        assert column["done"], dict(column)
        assert column["text"] == references[column["run_id"]], column["run_id"]
    assert columns(answered, "base")[0]["text"] == references[0]


def test_a_deleted_or_misfit_checkpoint_fails_its_generation_only(answered: dict[str, Any]) -> None:
    generations = {row["id"]: row for row in rows(answered["db"], "SELECT * FROM generation")}
    missing = generations[answered["ids"]["missing"]]
    settings = Settings(db_path=answered["db"], adapters_dir=answered["adapters"])
    weights, _ = checkpoint_files(settings, MISSING_RUN, answered["final"])
    assert missing["status"] == "failed"
    assert str(weights) in missing["error"] and "\n" not in missing["error"]
    assert tokens(answered, "missing") == []
    misfit = generations[answered["ids"]["misfit"]]
    weights, _ = checkpoint_files(settings, MISFIT_RUN, LAYOUT_ITERATION)
    assert misfit["status"] == "failed" and f"{weights} does not fit the loaded model" in misfit["error"]
    assert "\n" not in misfit["error"] and tokens(answered, "misfit") == []
    later = generations[answered["ids"]["trio"]]
    assert later["status"] == "completed" and later["job_id"] == answered["job_id"]


def test_idle_release_ends_the_job_completed(answered: dict[str, Any]) -> None:
    job = answered["job"]
    assert job["status"] == "completed", dict(job)
    assert json.loads(job["result_json"]) == {"generations": 10, "released": "idle"}
    assert (job["done"], job["total"], job["unit"]) == (10, 10, "prompts")
    assert "tiny-mistral loaded, 6 adapters cached" in job["detail"]
    statuses = [row["status"] for row in rows(answered["db"], "SELECT status FROM generation ORDER BY id")]
    assert statuses == ["completed", "completed", "completed", "failed", "failed", "completed", "completed",
                        "completed", "completed", "completed"]


def test_release_on_request_leaves_queued_generations(answered: dict[str, Any]) -> None:
    """A cancelled playground job ends stopped; a generation queued with the cancel waits for the next job."""
    db = answered["db"]
    session = Session(make_engine(db))
    job_id = add_job(session, idle_s=600)
    process = start_worker(answered["root"], answered["adapters"], job_id)
    deadline = time.monotonic() + 300
    while "idle" not in (rows(db, "SELECT detail FROM job WHERE id = ?", job_id)[0]["detail"] or ""):
        assert process.poll() is None and time.monotonic() < deadline, "the worker never waited for prompts"
        time.sleep(0.2)
    conn = sqlite3.connect(db)
    with conn:  # the app's cancel, then a new prompt
        conn.execute("UPDATE job SET status = 'stopping' WHERE id = ?", (job_id,))
    conn.close()
    left = queue(session, answered["model"], [None], max_tokens=2)
    session.close()
    job = wait_job(db, job_id, process)
    assert job["status"] == "stopped" and json.loads(job["result_json"]) == {"generations": 0, "released": "request"}
    assert rows(db, "SELECT status FROM generation WHERE id = ?", left)[0]["status"] == "queued"
