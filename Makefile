.PHONY: compile debug serve test test-pure lint typecheck fuzz bench faults clean

compile:
	sh scripts/venv.sh

debug:
	FASTMTA_DEBUG=1 sh scripts/venv.sh

serve:
	sh scripts/serve.sh

test:
	sh scripts/test.sh

test-pure:
	FASTMTA_PURE_PYTHON=1 .venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check fastmta tests bench
	.venv/bin/ruff format --check fastmta tests bench

typecheck:
	.venv/bin/mypy fastmta

fuzz:
	.venv/bin/python tests/fuzz/fuzz_parser.py --seconds 300

bench:
	.venv/bin/python bench/run.py

faults:
	.venv/bin/python bench/faults/run.py

clean:
	rm -rf build dist *.egg-info fastmta/*.so fastmta/smtp/*.so fastmta/_parser.c fastmta/smtp/_core.c fastmta/*.html fastmta/smtp/*.html
