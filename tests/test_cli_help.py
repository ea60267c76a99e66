"""Every command of the README's table answers --help with its usage and exit code 0 (in-process)."""
import importlib

import pytest

COMMANDS = {  # module -> an option its help must explain
    "fcn8s.build_dataset": "--sbd-root",
    "fcn8s.train": "--resume",
    "fcn8s.eval": "--scales",
    "fcn8s.predict": "--input",
    "fcn8s.export": "--format",
    "fcn8s.pretrained": "--table",
    "fcn8s.launch": "--max-restarts",
    "fcn8s.preflight": "--json",
    "fcn8s.cluster.entrypoint": "--rank-table-timeout",
    "fcn8s.cluster.__main__": "render",
    "fcn8s.data.synthetic": "--classes",
    "fcn8s.plots": "--eval-json",
    "rank_table.cli": "generate",
}


@pytest.mark.parametrize("module, option", COMMANDS.items())
def test_every_command_explains_itself(module, option, capsys):
    with pytest.raises(SystemExit) as ended:
        importlib.import_module(module).main(["--help"])
    assert ended.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and option in text
    description = text.split("\n\n")[1]  # the paragraph after the usage lines
    assert len(description.split()) >= 3 and not description.lstrip().startswith(("-", "options")), text
