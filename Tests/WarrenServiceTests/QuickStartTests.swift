import Foundation
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenService

/// The README's quick start, run as written (against the test broker and a queue of its own): the
/// commands are read from the README, so the document and this test cannot drift apart.
@Suite("quick start")
struct QuickStartTests {
    struct QuickStart {
        var serve: [String]
        var submit: [String]
        /// What the README says `submit` prints.
        var prints: String
    }

    /// The code spans of the README's "A local RabbitMQ" row: the serve and submit commands and the
    /// output promised right after the submit command.
    static func readme() throws -> QuickStart {
        let text = try String(contentsOf: TestEnvironment.root.appendingPathComponent("README.md"), encoding: .utf8)
        let row = try #require(text.split(separator: "\n").first { $0.hasPrefix("| A local RabbitMQ |") }, "the quick-start row")
        let spans = row.split(separator: "`", omittingEmptySubsequences: false).enumerated()
            .filter { $0.offset % 2 == 1 }.map { String($0.element) }
        let serve = try #require(spans.firstIndex { $0.contains("warren serve ") })
        let submit = try #require(spans.firstIndex { $0.contains("warren submit ") })
        return QuickStart(serve: words(spans[serve]), submit: words(spans[submit]), prints: spans[submit + 1])
    }

    /// Shell words: blanks separate, single and double quotes group.
    static func words(_ command: String) -> [String] {
        var words: [String] = [], current = "", quote: Character?, inWord = false
        for character in command {
            if let open = quote {
                if character == open { quote = nil } else { current.append(character) }
            } else if character == "'" || character == "\"" {
                quote = character
                inWord = true
            } else if character == " " {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        if inWord { words.append(current) }
        return words
    }

    /// A README command for this machine: the built `warren`, the test broker, this test's queue,
    /// run from the repository root (where the README's relative paths point).
    static func command(_ words: [String], queue: String, extra: [String] = []) throws -> [String] {
        #expect(words.first == ".build/release/warren", "\(words)")
        var arguments = Array(words.dropFirst())
        if let flag = arguments.firstIndex(of: "--broker-url") {
            arguments[flag + 1] = try TestEnvironment.amqpURL
        } else {
            arguments += ["--broker-url", try TestEnvironment.amqpURL]
        }
        return ["-c", #"cd "$0" && exec "$@""#, TestEnvironment.root.path, TestEnvironment.binary("warren")] + arguments + ["--queue", queue] + extra
    }

    @Test(.timeLimit(.minutes(4)))
    func theQuickStartWorksAsWritten() async throws {
        try await usingBroker { try await runQuickStart() }
    }

    func runQuickStart() async throws {
        let quickStart = try Self.readme()
        #expect(quickStart.prints == #"{"confirmed": {"order": 1}}"#)
        let queue = TestEnvironment.unique()
        var environment = ProcessInfo.processInfo.environment
        environment["WARREN_SECRETS_DIR"] = "/nonexistent"
        let serve = try ChildProcess(
            "/bin/sh", try Self.command(quickStart.serve, queue: queue, extra: ["--http-address", "127.0.0.1:0", "--log-format", "json"]),
            environment: environment)
        let base = try await operationsAddress(of: serve)
        try await waitUntil("/readyz", within: 30) { await get("\(base)/readyz")?.0 == 200 }

        let submit = try ChildProcess("/bin/sh", try Self.command(quickStart.submit, queue: queue), environment: environment)
        #expect(try await submit.exit(within: 60) == .exited(0), "\(submit.output)")
        #expect(submit.output.trimmingCharacters(in: .whitespacesAndNewlines) == quickStart.prints, "\(submit.output)")

        // A job nobody handles: the message says so, not that a handler rejected it.
        let unknown = try ChildProcess(
            TestEnvironment.binary("warren"),
            ["submit", "no.such.job", "--wait", "--timeout", "30s", "--broker-url", try TestEnvironment.amqpURL, "--queue", queue],
            environment: environment)
        #expect(try await unknown.exit(within: 60) == .exited(2))
        #expect(unknown.output.contains("no handler is registered for job name 'no.such.job'") && unknown.output.contains("(reason unknown_job_name)"),
                "\(unknown.output)")
        #expect(!unknown.output.contains("rejected"), "\(unknown.output)")

        serve.signal(SIGTERM)
        #expect(try await serve.exit(within: 30) == .exited(0), "\(serve.output)")
        let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { raw.close() }
        try TestBrokerQueues.delete(queue, on: raw)
    }

    @Test func aDeadLetteredReplyIsToldByItsReason() {
        // How AMQPTools.submit hands over a reply: the x-warren-dead-reason code and the worker's words.
        let exhausted = DeadLetterReason.rejected("retries_exhausted: retries exhausted after 1 attempt(s); last error: boom")
        #expect(deadLetterMessage(exhausted) == "retries exhausted after 1 attempt(s); last error: boom (reason retries_exhausted)")
        let rejected = DeadLetterReason.rejected("rejected: the handler rejected the job: POST /x answered 422")
        #expect(deadLetterMessage(rejected) == "the handler rejected the job: POST /x answered 422 (reason rejected)")
        #expect(deadLetterMessage(.unknownJobName("x")).hasSuffix("(reason unknown_job_name)"))
    }
}
