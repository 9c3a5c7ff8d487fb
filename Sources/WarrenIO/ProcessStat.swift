#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A process's `/proc/<pid>/stat` line, read once: the fields after its command name (which may
/// hold spaces and parentheses, so it ends at the line's last ')').
package struct ProcessStat: Sendable {
    /// From the state on: state, parent, process group, … (see proc(5), fields 3 onwards).
    private let fields: [Substring]

    /// Nil when the process does not exist (any more) or its line cannot be read.
    package init?(pid: Int32) {
        guard let line = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = line.lastIndex(of: ")") else {
            return nil
        }
        fields = line[line.index(after: end)...].split(separator: " ")
        guard fields.count > 12 else { return nil }
    }

    /// Exited but not yet reaped by its parent.
    package var isZombie: Bool { fields[0] == "Z" }
    package var parent: Int32? { Int32(fields[1]) }
    package var processGroup: Int32? { Int32(fields[2]) }
    /// User and system CPU time so far, in clock ticks (`sysconf(_SC_CLK_TCK)` a second).
    package var cpuTicks: Double? {
        guard let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return user + system
    }

    /// Every process on this machine, by pid.
    package static func all() -> [(pid: Int32, stat: ProcessStat)] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { name in Int32(name).flatMap { pid in ProcessStat(pid: pid).map { (pid, $0) } } }
    }
}
