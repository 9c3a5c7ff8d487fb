/// Checks that bytes are one JSON text (RFC 8259, any top-level value) in UTF-8, without building
/// a value: every message body goes through it, and Foundation's parser, which builds the whole
/// object graph, cost about 2.4 µs for a 90-byte body in a release build, half of what Warren
/// spends on a no-op job over RabbitMQ. Nesting deeper than `maxDepth` is refused.
struct JSONSyntax {
    static let maxDepth = 512

    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0
    /// Bytes past ASCII were seen (inside strings): the text is then checked as UTF-8 once.
    private var nonASCII = false

    private init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    static func isValid(_ body: [UInt8]) -> Bool {
        body.withUnsafeBufferPointer { buffer in
            var parser = JSONSyntax(buffer)
            guard parser.value(depth: 0) else { return false }
            parser.skipSpace()
            guard parser.index == buffer.count else { return false }
            return !parser.nonASCII || String(validating: buffer, as: UTF8.self) != nil
        }
    }

    private var current: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipSpace() {
        while let byte = current, byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { index += 1 }
    }

    private mutating func value(depth: Int) -> Bool {
        skipSpace()
        guard let byte = current else { return false }
        switch byte {
        case UInt8(ascii: "{"): return container(depth: depth, close: UInt8(ascii: "}"), keyed: true)
        case UInt8(ascii: "["): return container(depth: depth, close: UInt8(ascii: "]"), keyed: false)
        case UInt8(ascii: "\""): return string()
        case UInt8(ascii: "t"): return literal("true")
        case UInt8(ascii: "f"): return literal("false")
        case UInt8(ascii: "n"): return literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
        default: return false
        }
    }

    private mutating func container(depth: Int, close: UInt8, keyed: Bool) -> Bool {
        guard depth < Self.maxDepth else { return false }
        index += 1
        skipSpace()
        if current == close {
            index += 1
            return true
        }
        while true {
            if keyed {
                skipSpace()
                guard string() else { return false }
                skipSpace()
                guard current == UInt8(ascii: ":") else { return false }
                index += 1
            }
            guard value(depth: depth + 1) else { return false }
            skipSpace()
            switch current {
            case UInt8(ascii: ","): index += 1
            case close:
                index += 1
                return true
            default: return false
            }
        }
    }

    private mutating func string() -> Bool {
        guard current == UInt8(ascii: "\"") else { return false }
        index += 1
        while let byte = current {
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return true
            case UInt8(ascii: "\\"):
                guard let escaped = current else { return false }
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                     UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    continue
                case UInt8(ascii: "u"):
                    for _ in 0..<4 {
                        guard let hex = current, hex.isHexDigit else { return false }
                        index += 1
                    }
                default:
                    return false
                }
            case 0..<0x20:
                return false
            case 0x80...:
                nonASCII = true
            default:
                continue
            }
        }
        return false
    }

    private mutating func literal(_ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard bytes.count - index >= count else { return false }
        let start = word.utf8Start
        for offset in 0..<count where bytes[index + offset] != start[offset] { return false }
        index += count
        return true
    }

    private mutating func number() -> Bool {
        if current == UInt8(ascii: "-") { index += 1 }
        guard let first = current, first.isDigit else { return false }
        index += 1
        if first != UInt8(ascii: "0") { skipDigits() }
        if current == UInt8(ascii: ".") {
            index += 1
            guard current?.isDigit == true else { return false }
            skipDigits()
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            index += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
            guard current?.isDigit == true else { return false }
            skipDigits()
        }
        return true
    }

    private mutating func skipDigits() {
        while current?.isDigit == true { index += 1 }
    }
}

private extension UInt8 {
    var isDigit: Bool { self >= UInt8(ascii: "0") && self <= UInt8(ascii: "9") }
    var isHexDigit: Bool {
        isDigit || (self >= UInt8(ascii: "a") && self <= UInt8(ascii: "f")) || (self >= UInt8(ascii: "A") && self <= UInt8(ascii: "F"))
    }
}
