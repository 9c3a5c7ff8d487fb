# The two commands a newcomer needs (see README.md).
.PHONY: demo test bench

demo:
	@scripts/demo.sh

test:
	@scripts/test.sh

bench:
	swift build -c release --product warren-bench
	.build/release/warren-bench
