# The two commands a newcomer needs, make demo and make test, and the benchmarks (see README.md).
.PHONY: demo test bench bench-amqp

demo:
	@scripts/demo.sh

test:
	@scripts/test.sh

bench:
	swift build -c release --product warren-bench
	.build/release/warren-bench

bench-amqp:
	@scripts/bench-amqp.sh
