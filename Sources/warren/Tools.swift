import ArgumentParser
import Foundation
import Warren
import WarrenAMQP
import WarrenService

struct Submit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Publish a job to RabbitMQ; with --wait, print its result or error.")

    @OptionGroup var options: ServiceOptions
    @Argument(help: "The job name (its handler).") var name: String
    @Option(help: "The payload, JSON.") var payload = "{}"
    @Option(help: "critical, high, normal, low or background.") var priority = "normal"
    @Option(help: "Run no earlier than this from now (30s, 5m…; at most 720h, as every duration here: a producer may publish longer delays, see docs/wire-format.md).") var delay: String?
    @Option(help: "Retries if it fails.") var maxRetries: Int?
    @Option(help: "Job id (default: a new UUID); a job id already seen is dropped as a duplicate.") var id: String?
    @Flag(help: "Wait for the result (through a reply queue) and print it.") var wait = false
    @Option(help: "How long --wait waits.") var timeout = "60s"

    func run() async throws {
        let configuration = try await options.load()
        guard (try? JSONSerialization.jsonObject(with: Data(payload.utf8), options: [.fragmentsAllowed])) != nil else {
            throw ValidationError("--payload is not valid JSON: \(payload.prefix(80))")
        }
        guard let level = JobPriority(name: priority) else {
            throw ValidationError("--priority '\(priority)' is not one of critical, high, normal, low, background")
        }
        if let maxRetries, !(0...100).contains(maxRetries) { throw ValidationError("--max-retries \(maxRetries) must be 0 to 100") }
        var delayed = Duration.zero
        if let delay {
            guard let parsed = ServiceConfiguration.duration(delay) else {
                throw ValidationError("--delay '\(delay)' is not \(ServiceConfiguration.durationForm)")
            }
            delayed = parsed
        }
        guard let waitFor = ServiceConfiguration.duration(timeout), waitFor > .zero else {
            throw ValidationError("--timeout '\(timeout)' is not \(ServiceConfiguration.durationForm), more than 0")
        }
        let job = Job(
            id: id.map { JobID($0) } ?? .random(), name: name, payload: Data(payload.utf8), priority: level,
            notBefore: delay == nil ? nil : Date().addingTimeInterval(delayed.timeInterval),
            maxRetries: maxRetries ?? configuration.maxRetries)
        let tools = configuration.tools()
        // A delayed job is waited for past its delay.
        let outcome = try await tools.submit(job, wait: wait ? waitFor + delayed : nil, statesMaxRetries: maxRetries != nil)
        guard wait else {
            print(job.id)
            return
        }
        switch outcome {
        case let .completed(result)?:
            // A result that ends its line (an exec handler's output) gets no second newline.
            let text = String(decoding: result, as: UTF8.self)
            print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
        case let .deadLettered(reason, _)?:
            FileHandle.standardError.write(Data("job \(job.id) was dead-lettered: \(deadLetterMessage(reason))\n".utf8))
            throw ExitCode(2)
        case .cancelled?:
            FileHandle.standardError.write(Data("job \(job.id) was cancelled\n".utf8))
            throw ExitCode(2)
        case nil:
            FileHandle.standardError.write(Data("no result for job \(job.id) within \(timeout) (it may still run)\n".utf8))
            throw ExitCode(3)
        }
    }
}

struct Queues: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Depth and consumers of each priority queue and of the dead-letter queue.")
    @OptionGroup var options: ServiceOptions
    @Argument(help: "Warren queues to show (default: the configured queue.name).") var names: [String] = []

    func run() async throws {
        let configuration = try await options.load()
        var depths: [AMQPTools.QueueDepth] = []
        for name in names.isEmpty ? [configuration.queue] : names {
            do {
                depths += try await configuration.tools(queue: name).depths()
            } catch {
                throw Failure("\(error)")
            }
        }
        print("QUEUE                                   READY  CONSUMERS")
        for depth in depths {
            print("\(depth.name.rightPadded(36)) \(String(depth.messages).leftPadded(9))  \(String(depth.consumers).leftPadded(9))")
        }
    }
}

struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letters", abstract: "Inspect, replay or purge the dead-letter queue.",
        subcommands: [List.self, Show.self, Replay.self, Purge.self])

    struct Filters: ParsableArguments {
        @Option(help: "Only jobs of this name.") var name: String?
        @Option(help: "Only this reason (retries_exhausted, deadline, unknown_job_name, undecodable_payload, malformed_message, rejected…).")
        var reason: String?
        @Option(help: "At most this many.") var limit: Int?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit \(limit) must be at least 1") }
        }

        func filter(id: String? = nil) -> AMQPTools.Filter {
            AMQPTools.Filter(name: name, reason: reason, id: id, limit: limit ?? .max)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters (reason, attempts, age); nothing is removed.")
        @OptionGroup var options: ServiceOptions
        @OptionGroup var filters: Filters

        func run() async throws {
            let configuration = try await options.load()
            let letters = try await configuration.tools().deadLetters(filters.filter())
            print("ID                                    NAME                      REASON               ATTEMPTS  AGE")
            for letter in letters {
                print("\(letter.id.rightPadded(37)) \(letter.name.rightPadded(25)) \(letter.reason.rightPadded(20)) \(String(letter.attempts).leftPadded(8))  \(age(letter.deadAt))")
            }
            print("\(letters.count) dead letter(s)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Everything about one dead letter, with its payload.")
        @OptionGroup var options: ServiceOptions
        @Argument(help: "The job id.") var id: String

        func run() async throws {
            let configuration = try await options.load()
            guard let letter = try await configuration.tools()
                .deadLetters(AMQPTools.Filter(id: id, limit: 1)).first else {
                throw ValidationError("no dead letter with id \(id)")
            }
            print("id:        \(letter.id)\nname:      \(letter.name)\npriority:  \(letter.priority.name)\nreason:    \(letter.reason)")
            print("error:     \(letter.error)\nattempts:  \(letter.attempts)\ndead at:   \(plausible(letter.deadAt).map { $0.formatted(.iso8601) } ?? "unknown") (\(age(letter.deadAt)) ago)")
            print("was going: \(letter.originalRoutingKey)\npayload:   \(String(decoding: letter.body.prefix(64 << 10), as: UTF8.self))")
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish matching dead letters again to their priority queue, attempts reset; each is confirmed before its dead copy goes.")
        @OptionGroup var options: ServiceOptions
        @OptionGroup var filters: Filters
        @Option(help: "Only the job with this id.") var id: String?

        func run() async throws {
            let configuration = try await options.load()
            let count = try await configuration.tools().replay(filters.filter(id: id))
            print("replayed \(count) job(s)")
        }
    }

    struct Purge: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete matching dead letters for good.")
        @OptionGroup var options: ServiceOptions
        @OptionGroup var filters: Filters
        @Option(help: "Only the job with this id.") var id: String?
        @Flag(help: "Required when no filter is given: purge every dead letter.") var all = false

        func run() async throws {
            guard all || filters.name != nil || filters.reason != nil || id != nil else {
                throw ValidationError("give --name, --reason or --id, or --all to purge every dead letter")
            }
            let configuration = try await options.load()
            let count = try await configuration.tools().purge(filters.filter(id: id))
            print("purged \(count) dead letter(s)")
        }
    }
}

/// A date from a message header, if it is within a thousand years of now (a producer's header may
/// hold any number; converting an absurd one would trap).
private func plausible(_ date: Date?) -> Date? {
    guard let date, abs(date.timeIntervalSinceNow) < 1_000 * 366 * 86_400 else { return nil }
    return date
}

private func age(_ date: Date?) -> String {
    guard let date = plausible(date) else { return "?" }
    let seconds = Int(Date().timeIntervalSince(date))
    if seconds < 120 { return "\(seconds)s" }
    if seconds < 7_200 { return "\(seconds / 60)m" }
    if seconds < 172_800 { return "\(seconds / 3_600)h" }
    return "\(seconds / 86_400)d"
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
    /// Padded to `width`, never cut (a long name pushes the columns right instead).
    func rightPadded(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
