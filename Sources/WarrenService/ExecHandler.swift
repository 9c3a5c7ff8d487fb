import Foundation
import Instrumentation
import Subprocess
import Warren
import SystemPackage

/// Runs a job as a command: the payload on stdin; exit 0 completes it with stdout as the result;
/// any other exit fails the attempt with the end of stderr as the error. The command runs in a
/// process group of its own; when the job times out or is cancelled the whole group is killed
/// (SIGTERM, then SIGKILL a second later), children included.
///
/// The command gets a clean environment, never Warren's own (which holds the broker password):
/// `PATH`, `HOME`, `USER`, `LOGNAME`, `LANG`, `LANGUAGE`, `LC_*`, `TZ` and `TMPDIR` when Warren has
/// them, the variables the entry names in `inherit_env`, `WARREN_JOB_ID`, `WARREN_JOB_NAME`,
/// `WARREN_ATTEMPT`, `TRACEPARENT` when the job carries one, and the entry's `env`. Errors name the
/// program only, never its arguments or environment; in the stderr excerpt, any argument or
/// `env`/`inherit_env` value (of four characters or more) is replaced by `***`.
struct ExecHandler: Sendable {
    static let maxOutputBytes = 8 << 20
    static let errorTail = 2_000
    /// Passed from Warren's environment to every command.
    static let basicVariables: Set<String> = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"]

    let action: HandlersFile.ExecAction
    /// Warren's environment, which `basicVariables` and `inherit_env` are taken from.
    var parentEnvironment: [String: String] = ProcessInfo.processInfo.environment

    /// The command's whole environment for this job.
    func environment(for context: JobContext) -> [String: String] {
        let inherited = Set(action.inheritedEnvironment)
        var environment = parentEnvironment.filter { key, _ in
            Self.basicVariables.contains(key) || key.hasPrefix("LC_") || inherited.contains(key)
        }
        if environment["PATH"] == nil { environment["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        environment["WARREN_JOB_ID"] = context.id.rawValue
        environment["WARREN_JOB_NAME"] = context.name
        environment["WARREN_ATTEMPT"] = "\(context.attempt)"
        // The attempt's span as TRACEPARENT (and TRACESTATE), the way OpenTelemetry's tools read it.
        context.injectTraceContext(into: &environment, using: EnvironmentInjector())
        environment.merge(action.environment) { $1 }
        return environment
    }

    /// What the stderr excerpt must not show.
    var secrets: [String] {
        Array(action.command.dropFirst()) + Array(action.environment.values)
            + action.inheritedEnvironment.compactMap { parentEnvironment[$0] }
    }

    func run(_ payload: Data, _ context: JobContext) async throws -> Data {
        var options = PlatformOptions()
        options.processGroupID = 0
        options.teardownSequence = [
            .send(signal: .terminate, toProcessGroup: true, allowedDurationToNextStep: .seconds(1)),
            .send(signal: .kill, toProcessGroup: true, allowedDurationToNextStep: .seconds(1)),
        ]
        var environment: [Environment.Key: String] = [:]
        for (key, value) in self.environment(for: context) {
            if let key = Environment.Key(rawValue: key) { environment[key] = value }
        }
        let program = action.command[0]
        let executable: Executable = program.contains("/") ? .path(FilePath(program)) : .name(program)
        let result: ExecutionResult<Void, BytesOutput, BytesOutput>
        var group: pid_t?
        defer {
            // A stopped command (timeout, cancel, shutdown) may have ended without its group: a
            // shell that died of SIGTERM while its child, ignoring it, runs on.
            if Task.isCancelled { Self.killRest(of: group) }
            if let group { HandlerProcesses.ended(group) }
        }
        do {
            // Stdin is an unlinked temporary file, not a pipe: a command that exits without reading
            // its input must not meet a broken pipe (swift-subprocess 1.0.2 traps on it, issue 367).
            let stdin = try Self.inputFile(payload)
            result = try await Subprocess.run(
                executable, arguments: Arguments(Array(action.command.dropFirst())), environment: .custom(environment),
                workingDirectory: action.workingDirectory.map { FilePath($0) }, platformOptions: options,
                input: .fileDescriptor(stdin, closeAfterSpawningProcess: true), output: .bytes(limit: Self.maxOutputBytes),
                error: .bytes(limit: Self.maxOutputBytes)
            ) { execution in
                // Its group (its pid) is known while it runs, so that none outlives `serve`.
                group = execution.processIdentifier.value
                HandlerProcesses.started(execution.processIdentifier.value)
            }
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw ExecHandlerError(Redactor.scrub("\(program) could not be started: \(error)", hiding: secrets))
        }
        switch result.terminationStatus {
        case .exited(0):
            return Data(result.standardOutput)
        case let .exited(code):
            throw ExecHandlerError("\(program) exited with \(code)\(Redactor.scrub(Self.tail(result.standardError), hiding: secrets))")
        case let .signaled(signal):
            throw ExecHandlerError("\(program) was killed by signal \(signal)\(Redactor.scrub(Self.tail(result.standardError), hiding: secrets))")
        }
    }

    /// A stopped command's group after its teardown: what is left of it gets SIGKILL, instead of
    /// running on, orphaned, beside the job's next attempt. Before `HandlerProcesses` forgets the
    /// group (see there why the id is still the command's).
    static func killRest(of group: pid_t?) {
        if let group { _ = kill(-group, SIGKILL) }
    }

    /// The payload in a file that is already unlinked: gone when the command's stdin closes.
    static func inputFile(_ payload: Data) throws -> FileDescriptor {
        let path = FilePath(NSTemporaryDirectory() + "warren-stdin-\(UUID().uuidString)")
        let writer = try FileDescriptor.open(path, .writeOnly, options: [.create, .exclusiveCreate], permissions: .ownerReadWrite)
        defer { try? writer.close() }
        let reader = try FileDescriptor.open(path, .readOnly)
        _ = path.withPlatformString { unlink($0) }
        do {
            try writer.writeAll(payload)
        } catch {
            try? reader.close()
            throw error
        }
        return reader
    }

    static func tail(_ bytes: [UInt8]) -> String {
        guard !bytes.isEmpty else { return "" }
        let text = String(decoding: bytes.suffix(errorTail), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "" : ": \(bytes.count > errorTail ? "…" : "")\(text)"
    }
}

struct ExecHandlerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Trace context into a child's environment: `traceparent` as `TRACEPARENT`.
struct EnvironmentInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key.uppercased()] = value }
}
