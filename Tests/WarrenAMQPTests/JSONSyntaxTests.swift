import Foundation
import Testing
import WarrenConformance
import Warren
@testable import WarrenAMQP

/// The body check: RFC 8259 syntax in UTF-8, as Foundation's parser reads it, without building values.
@Suite("JSON syntax")
struct JSONSyntaxTests {
    @Test(arguments: [
        "{}", "[]", #""x""#, "0", "-0.5e+10", "1E-3", " true ", "false", "null", #"{"a":[1,2,{"b":null}],"c":"é\n\u00e9\"\\\/"}"#,
        #"["\ud83d\ude00"]"#, "[[[[[]]]]]", "\t{\r\n\"k\" : 12 }\n", #""日本語""#,
    ])
    func validTextsPass(_ text: String) {
        #expect(JSONSyntax.isValid(Array(text.utf8)))
    }

    @Test(arguments: [
        "", " ", "{", "}", #"{"a":}"#, #"{"a":1,}"#, "[1,]", "[1 2]", "01", "1.", ".5", "+1", "-", "1e", "1e+", #""\x""#, #""\u12""#,
        "\"a\nb\"", "{'a':1}", "nul", "truex", #"{"a":1}{"b":2}"#, #"{"a" 1}"#, #"{1:2}"#, "[\"a\"", "\u{0}", "{\"a\":\"\u{0}\"}",
        #"{"a":"b"#,
    ])
    func invalidTextsFail(_ text: String) {
        #expect(!JSONSyntax.isValid(Array(text.utf8)))
    }

    @Test func invalidUTF8AndDeepNestingFail() {
        #expect(!JSONSyntax.isValid([0x22, 0xFF, 0x22]))
        #expect(!JSONSyntax.isValid([0x22, 0xC0, 0xAF, 0x22]), "an overlong encoding")
        #expect(!JSONSyntax.isValid([0x22, 0xED, 0xA0, 0x80, 0x22]), "an encoded surrogate")
        #expect(JSONSyntax.isValid([0x22, 0xC3, 0xA9, 0x22]))
        let deep = String(repeating: "[", count: JSONSyntax.maxDepth) + String(repeating: "]", count: JSONSyntax.maxDepth)
        #expect(JSONSyntax.isValid(Array(deep.utf8)))
        #expect(!JSONSyntax.isValid(Array(("[" + deep + "]").utf8)))
        // UTF-16 (what Foundation's parser would also take) is not UTF-8 JSON.
        #expect(!JSONSyntax.isValid(Array("{}".utf16.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] })))
    }

    /// Seeded random JSON texts and mutations of them: the same answer as Foundation's parser,
    /// except where RFC 8259 leaves it to the parser (numbers past a double's range, lone surrogates).
    @Test func agreesWithFoundationOnRandomTexts() async throws {
        var random = SplitMix64(seed: ProcessInfo.processInfo.environment["WARREN_FUZZ_SEED"].flatMap(UInt64.init) ?? 12_345)
        func value(_ depth: Int) -> String {
            switch Int.random(in: 0...(depth > 3 ? 4 : 6), using: &random) {
            case 0: return "null"
            case 1: return Bool.random(using: &random) ? "true" : "false"
            case 2: return "\(Int.random(in: -1_000...1_000, using: &random))"
            case 3: return "\(Double.random(in: -10...10, using: &random))"
            case 4: return "\"" + String((0..<Int.random(in: 0...6, using: &random)).map { _ in "aé\\n\"x ".randomElement(using: &random)! })
                .replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
            case 5: return "[" + (0..<Int.random(in: 0...3, using: &random)).map { _ in value(depth + 1) }.joined(separator: ",") + "]"
            default:
                return "{" + (0..<Int.random(in: 0...3, using: &random)).map { index in "\"k\(index)\":" + value(depth + 1) }.joined(separator: ",") + "}"
            }
        }
        let alphabet = Array(#"{}[]:,"\ 0123456789-.eEtrufalsn"#.utf8) + [0x0A, 0xC3, 0xA9, 0xFF]
        var disagreements: [String] = []
        for round in 0..<3_000 {
            // Yields now and then, so that the timers of the tests running beside it stay on time.
            if round % 200 == 0 { await Task.yield() }
            var bytes = Array(value(0).utf8)
            for _ in 0..<Int.random(in: 0...2, using: &random) where !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0...2, using: &random) {
                case 0: bytes.remove(at: at)
                case 1: bytes.insert(alphabet.randomElement(using: &random)!, at: at)
                default: bytes[at] = alphabet.randomElement(using: &random)!
                }
            }
            let foundation = (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            let ours = JSONSyntax.isValid(bytes)
            guard foundation != ours else { continue }
            let text = String(decoding: bytes, as: UTF8.self)
            // Where RFC 8259 leaves it to the parser: exponents past a double's range.
            if ours, text.contains(where: { $0 == "e" || $0 == "E" }) { continue }
            disagreements.append("\(text) (Foundation \(foundation), ours \(ours))")
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(10))")
    }
}
