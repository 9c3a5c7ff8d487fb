import ArgumentParser
import Foundation
import Warren
import WarrenRedis
import WarrenService

/// Runs `body` with the job-state store of the configuration (`state.url`), connected, and closes
/// the connection after; a clear error when there is no store or it does not answer.
private func usingStateStore<T>(_ options: ServiceOptions, _ body: (RedisJobStore) async throws -> T) async throws -> T {
    let configuration = try await options.load()
    guard let url = configuration.stateURL else {
        throw Failure(
            "this needs the job-state store: set state.url (WARREN_STATE_URL) to the Redis every instance uses. "
                + "Without it a job's status is known only to the instance that ran it (its /jobs/{id})")
    }
    let (client, store) = WorkerService.stateStore(configuration, url: url)
    // Its first connection made or failed (refused, a wrong password: at once; silence: the URL's timeout).
    do {
        try await client.waitUntilConnected(within: .seconds(5), untilFirstFailure: true)
    } catch {
        await client.close()
        throw Failure("the job-state store at \(url) cannot be used: \(error)")
    }
    do {
        let value = try await body(store)
        await client.close()
        return value
    } catch {
        await client.close()
        throw error
    }
}

/// A job's record as `status` prints it: one `field: value` per line.
private func describe(_ record: StoredJob) -> String {
    func time(_ date: Date?) -> String? { date.map { $0.formatted(.iso8601) } }
    var lines: [(String, String?)] = [
        ("id", record.id.rawValue), ("name", record.name), ("priority", record.priority?.name),
        ("status", record.status?.rawValue ?? "not taken by any instance yet"),
        ("attempt", "\(record.attempt)"), ("progress", "\(record.progress)"), ("instance", record.instance.flatMap { $0.isEmpty ? nil : $0 }),
        ("error", record.error), ("reason", record.deadLetterReason?.code), ("created_at", time(record.createdAt)), ("started_at", time(record.startedAt)),
        ("finished_at", time(record.finishedAt)),
    ]
    if record.cancelRequested { lines.append(("cancel_requested", "true")) }
    if record.resultTruncated { lines.append(("result_truncated", "true")) }
    return lines.compactMap { name, value in value.map { "\(name): \($0)" } }.joined(separator: "\n")
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A job's status, attempt, progress and instance, from the job-state store (state.url), whichever instance ran it.")

    @OptionGroup var options: ServiceOptions
    @Argument(help: "The job id.") var id: String

    func run() async throws {
        guard let record = try await usingStateStore(options, { try await $0.job(JobID(id)) }) else {
            FileHandle.standardError.write(Data("no job \(id) in the job-state store (never taken by an instance, or past state.retention)\n".utf8))
            throw ExitCode(3)
        }
        print(describe(record))
        // Only a cancel was asked for it: no instance knows the job.
        if record.status == nil { throw ExitCode(3) }
    }
}

struct Result: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A job's result from the job-state store (state.url); with --wait, wait for it to end.")

    @OptionGroup var options: ServiceOptions
    @Argument(help: "The job id.") var id: String
    @Flag(help: "Wait until the job ends.") var wait = false
    @Option(help: "How long --wait waits.") var timeout = "60s"

    func run() async throws {
        guard let waitFor = ServiceConfiguration.duration(timeout), waitFor > .zero else {
            throw ValidationError("--timeout '\(timeout)' is not \(ServiceConfiguration.durationForm), more than 0")
        }
        let record = try await usingStateStore(options) { store in
            wait ? try await store.waitUntilEnded(JobID(id), within: waitFor) : try await store.job(JobID(id))
        }
        switch record?.status {
        case .completed?:
            // The bytes as the handler returned them; a line of its own.
            let result = record?.result ?? []
            FileHandle.standardOutput.write(Data(result.last == UInt8(ascii: "\n") ? result : result + [UInt8(ascii: "\n")]))
            if record?.resultTruncated == true {
                FileHandle.standardError.write(Data("the result was longer than state.result_limit: this is its beginning\n".utf8))
            }
        case .deadLettered?:
            let code = record?.deadLetterReason.map { " (reason \($0.code))" } ?? ""
            FileHandle.standardError.write(Data("job \(id) was dead-lettered: \(record?.error ?? "no reason recorded")\(code)\n".utf8))
            throw ExitCode(2)
        case .cancelled?:
            FileHandle.standardError.write(Data("job \(id) was cancelled\n".utf8))
            throw ExitCode(2)
        case let status:
            let state = status.map { "it is \($0.rawValue)" }
                ?? (record?.cancelRequested == true ? "no instance has taken it yet; a cancel was asked for it" : "the store has no record of it")
            FileHandle.standardError.write(Data("no result for job \(id)\(wait ? " within \(timeout)" : "") (\(state))\n".utf8))
            throw ExitCode(3)
        }
    }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a job wherever it is (job-state store, state.url): a running one is stopped, a queued one never runs.")

    @OptionGroup var options: ServiceOptions
    @Argument(help: "The job id.") var id: String

    func run() async throws {
        switch try await usingStateStore(options, { try await $0.requestCancel(JobID(id)) }) {
        case let .finished(status):
            print("job \(id) had already ended: \(status.rawValue)")
            throw ExitCode(2)
        case let .requested(status, instance):
            switch status {
            case .running?:
                print("cancelling job \(id): instance \(instance ?? "?") is stopping it")
            case let status?:
                print("cancelled job \(id) (\(status.rawValue)): it will not run")
            case nil:
                print("no instance has taken job \(id) yet: it is cancelled when it arrives (within state.retention)")
            }
        }
    }
}
