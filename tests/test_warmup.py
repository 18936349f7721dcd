"""`mlip warmup`: the programs it compiles are those the warmed command runs, so that command,
in a fresh process with the same persistent cache, reads them and compiles none of them."""

import json
import subprocess
import sys

from ase.build import bulk
from ase.io import write

from mlip.cli import main
from tests.test_runtime import tiny

#: Runs mlip command lines (argv[2], JSON) in one process with the persistent cache in
#: argv[1] (every program written, however quick to compile), and prints the names of the
#: programs read from the cache ("hit") and compiled ("miss").
RUN_COMMANDS = """
import json, logging, sys
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
seen = {"hit": [], "miss": []}
prefixes = {"Persistent compilation cache hit": "hit", "PERSISTENT COMPILATION CACHE MISS": "miss"}
class Seen(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        for prefix, kind in prefixes.items():
            if message.startswith(prefix):
                seen[kind].append(message.split("'")[1])
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Seen())
from mlip.cli import main
for line in json.loads(sys.argv[2]):
    assert main(line) == 0, line
print(json.dumps(seen))
"""


def run_commands(cache, lines) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN_COMMANDS, str(cache), json.dumps(lines)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_after_warmup_predict_and_relax_compile_nothing_in_a_fresh_process(tmp_path):
    model, structure = tmp_path / "tiny.mlip", tmp_path / "si.extxyz"
    tiny().save(model)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    write(structure, atoms)
    predict = ["predict", str(model), str(structure)]
    relax = ["relax", str(structure), "--model", str(model), "--steps", "3", "-q", "-o", str(tmp_path / "out.extxyz")]
    model_programs = {"jit_compute", "jit_start", "jit_chunk"}  # the potential; the engine's first and chunk calls

    warmed = run_commands(tmp_path / "cache", [["warmup", *predict], ["warmup", *relax]])
    assert model_programs <= set(warmed["miss"])  # compiled by warmup (the cache was empty)
    assert not (tmp_path / "out.extxyz").exists()  # and nothing ran
    later = run_commands(tmp_path / "cache", [predict, relax])
    assert model_programs <= set(later["hit"])
    assert not model_programs & set(later["miss"]), later["miss"]
    assert (tmp_path / "out.extxyz").exists()


def test_warmup_names_the_commands_it_prepares(capsys):
    assert main(["warmup", "train", "config.yaml"]) == 2
    assert "predict, relax, md (got train)" in capsys.readouterr().err

