# Shortcuts for the README's commands (bash tools/demo.sh, bash tools/test.sh).
.PHONY: setup demo test test-fast
setup:
	bash tools/setup.sh
demo:
	bash tools/demo.sh
test:
	bash tools/test.sh
test-fast:
	bash tools/test.sh -m "not slow"
