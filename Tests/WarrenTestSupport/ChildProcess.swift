public import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A child process with its own environment; its stdout (and stderr, unless `keepStderr`) goes to a
/// file that `output` and `lines` read. Killed when dropped, if it still runs; the file goes with it.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let logPath: String
    private let reaped = Mutex(false)

    public init(
        _ executable: String, _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
        keepStderr: Bool = false
    ) throws {
        logPath = NSTemporaryDirectory() + "warren-child-\(UUID().uuidString).log"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if !keepStderr { posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var attributes = ChildProcess.cleanSignals()
        defer { posix_spawnattr_destroy(&attributes) }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else { throw TimedOut(description: "could not start \(executable): \(status)") }
        self.pid = pid
    }

    /// Spawn attributes that give a child no blocked signals and every signal's default action:
    /// the test runner's threads block or ignore some, and a child would inherit that (a Redis
    /// started from a test ignored SIGTERM and was killed only after scripts/redis.sh's 10 s).
    private static func cleanSignals() -> posix_spawnattr_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        return attributes
    }

    deinit {
        defer { unlink(logPath) }
        guard !reaped.withLock({ $0 }) else { return }
        _ = kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The complete lines written so far (a line still being written is left out).
    public var lines: [String] {
        var lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        _ = lines.popLast()  // after the last newline: empty, or a line not finished yet
        return lines
    }

    public func signal(_ signal: Int32) { _ = kill(pid, signal) }

    /// A product the build put next to the running test bundle.
    public static func builtProduct(_ name: String) -> String {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent(name).path
    }

    public func exit(within seconds: Double) async throws -> ProcessExit {
        let exit = try await ProcessExit.wait(for: pid, within: seconds)
        reaped.withLock { $0 = true }
        return exit
    }
}
