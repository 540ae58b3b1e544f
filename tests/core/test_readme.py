"""Every python block of the README runs and prints exactly the ```text block that follows it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"```python\n(?P<code>.*?)```\n(?:\s*```text\n(?P<output>.*?)```)?", re.DOTALL)


def _examples() -> list[tuple[str, str | None]]:
    return [(m["code"], m["output"]) for m in _BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_readme_has_examples_with_expected_output() -> None:
    examples = _examples()
    assert len(examples) >= 5
    assert all(output is not None for _, output in examples), (
        "every python block needs a ```text output block"
    )


def test_first_example_is_the_hello_echo_chain() -> None:
    code, output = _examples()[0]
    assert "achain_loop" in code and "hello_agent" in code and "echo_agent" in code
    assert output == "Hello!\nYou said: Hello!\n"


@pytest.mark.parametrize("index", range(len(_examples())))
def test_readme_example_prints_its_documented_output(index: int, tmp_path: Path) -> None:
    code, expected = _examples()[index]
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
