import Foundation
import Testing
import WarrenAMQP
import WarrenTestSupport

/// Checks on the built binaries that keep both cores busy for a second or two (a benchmark run,
/// `nm` of a debug binary): `make test` runs them on their own, after the other tests, so the
/// timing of those does not suffer (a delayed job once started 1.2 s late beside them).
@Suite("binaries")
struct BinaryTests {
    /// `make bench` runs the in-memory part of `warren-bench`: here with small counts, past the
    /// point where the queue-operation run reuses its ids (it crashed there once), and the
    /// `warren` binary no longer knows the command.
    @Test(.timeLimit(.minutes(2)))
    func theInMemoryBenchRunsAndIsNotPartOfWarren() async throws {
        let bench = try ChildProcess(TestEnvironment.binary("warren-bench"), ["--operations", "45000", "--jobs", "5000", "--critical-samples", "20"])
        #expect(try await bench.exit(within: 90) == .exited(0), "\(bench.output)")
        for line in ["queue operations (enqueue+dequeue+ack, one thread):", "end-to-end no-op jobs through the worker pool:",
                     "critical start latency, 10,000 low jobs waiting:"] {
            #expect(bench.output.contains(line), "\(bench.output)")
        }
        let warren = try ChildProcess(TestEnvironment.binary("warren"), ["bench"])
        #expect(try await warren.exit(within: 30) != .exited(0), "\(warren.output)")
        // Nor any test or benchmark code: no symbol of those modules and types is linked in. (The
        // listing is filtered by grep in the child: reading all of it here held a thread of the
        // test executor for a second, late enough for other tests' timers.)
        let markers = ["17WarrenTestSupport", "17WarrenConformance", "14AMQPBenchmarks", "11ManualClock", "10SplitMix64", "5Bench"]
        let nm = try ChildProcess("/bin/sh", [
            "-c", #"nm "$0" | wc -l; nm "$0" | grep -E "$1" | head -5"#, TestEnvironment.binary("warren"), markers.joined(separator: "|"),
        ])
        #expect(try await nm.exit(within: 60) == .exited(0))
        let lines = nm.lines
        #expect((Int(lines.first?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0) > 10_000, "nm listed symbols: \(lines.first ?? "")")
        #expect(lines.count == 1, "symbols of test or bench code in warren: \(lines.dropFirst())")
    }

    /// A count of 0 is refused, naming the flag (`--critical-samples 0` crashed, and `--jobs 0`
    /// printed a rate of 0 as if measured).
    @Test(.timeLimit(.minutes(1)))
    func theBenchRefusesCountsBelowOne() async throws {
        for flag in ["--operations", "--jobs", "--concurrency", "--critical-samples", "--amqp-messages", "--amqp-rounds"] {
            let bench = try ChildProcess(TestEnvironment.binary("warren-bench"), [flag, "0"])
            #expect(try await bench.exit(within: 30) == .exited(64), "\(flag) 0: \(bench.output)")
            #expect(bench.output.contains("\(flag) must be 1 or more"), "\(bench.output)")
        }
    }

    /// Two benchmarks against one RabbitMQ would drain and purge each other's queues (same names):
    /// one printed ratios of 11× for minutes, the other waited forever for jobs the first had run.
    /// While a run holds the claim (an exclusive queue), another refuses at once, before it
    /// touches any queue. A broker process id that is not a RabbitMQ node is refused too, and so are
    /// the flags that only make sense with `--amqp-url` without it.
    @Test(.timeLimit(.minutes(4)))
    func aSecondBenchAgainstTheSameBrokerIsRefused() async throws {
        try await usingBroker {
            let url = try TestEnvironment.amqpURL
            let running = try RawConnection(url: try AMQPURL(url))
            defer { running.close() }
            _ = try running.declareQueue("warren-bench.running", exclusive: true)
            let bench = try ChildProcess(TestEnvironment.binary("warren-bench"), ["--amqp-url", url, "--amqp-queue-type", "quorum"])
            #expect(try await bench.exit(within: 30) == .exited(1), "\(bench.output)")
            #expect(bench.output.contains("another warren-bench is measuring against this RabbitMQ"), "\(bench.output)")
            #expect(!bench.output.contains("round 1"), "\(bench.output)")
        }
        let refused = [
            (["--amqp-broker-pid", "0"], "must be a process id from 1 to"),
            (["--amqp-broker-pid", "99999999"], "no CPU time in /proc/99999999/stat"),
            // This test process: it exists, but it is no RabbitMQ (its CPU would read as the broker's).
            (["--amqp-broker-pid", "\(ProcessInfo.processInfo.processIdentifier)"], "not a RabbitMQ node (beam.smp)"),
        ]
        for (flags, message) in refused {
            let bench = try ChildProcess(TestEnvironment.binary("warren-bench"), ["--amqp-url", "amqp://127.0.0.1:1/"] + flags)
            #expect(try await bench.exit(within: 30) == .exited(64), "\(flags): \(bench.output)")
            #expect(bench.output.contains(message), "\(bench.output)")
        }
        for flags in [["--amqp-broker-pid", "1"], ["--redis-url", "redis://127.0.0.1:1"]] {
            let bench = try ChildProcess(TestEnvironment.binary("warren-bench"), flags)
            #expect(try await bench.exit(within: 30) == .exited(64), "\(flags): \(bench.output)")
            #expect(bench.output.contains("\(flags[0]) goes with --amqp-url"), "\(bench.output)")
        }
    }

    /// Warren and WarrenAMQP import FoundationEssentials only, so a process that embeds them (here
    /// the test worker, built from those two) loads neither full Foundation nor its
    /// internationalization library and ICU, about 10 MiB resident (scripts/memory.py).
    @Test(.timeLimit(.minutes(1)))
    func anEmbeddingProcessLinksNoFullFoundation() async throws {
        let readelf = try ChildProcess("/bin/sh", ["-c", #"readelf -d "$0" | grep NEEDED"#, TestEnvironment.binary("WarrenTestWorker")])
        #expect(try await readelf.exit(within: 30) == .exited(0), "\(readelf.output)")
        let needed = readelf.lines.compactMap { $0.split(separator: "[").last?.split(separator: "]").first.map(String.init) }
        #expect(needed.contains("libFoundationEssentials.so"), "\(needed)")
        for library in ["libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so"] {
            #expect(!needed.contains(library), "the worker needs \(library): \(needed)")
        }
    }
}
