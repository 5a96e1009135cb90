import Foundation
import XCTest
@testable import Kilotune

/// The user journey on the tiny fixture (tests/fixtures in the repository), as the Java and C
/// tests walk it: train, save, reload in a new session, same outputs; and typed failures.
final class JourneyTests: XCTestCase {
    let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("tests/fixtures")

    /// Class 1 when a row's first token is 64 or more (the C and Java tests' toy task).
    func toyData(count: Int, seed: UInt64, rows: Int = 8, seq: Int = 6) -> [Batch] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<count).map { _ in
            var ids = [Int64](repeating: 0, count: rows * seq)
            for i in ids.indices {
                s = s &* 6364136223846793005 &+ 1442695040888963407
                ids[i] = Int64((s >> 33) % 127) + 1
            }
            let labels = (0..<rows).map { UInt32(ids[$0 * seq] >= 64 ? 1 : 0) }
            return Batch(rows: rows, seqLen: seq, inputIds: ids, attentionMask: .init(repeating: 1, count: rows * seq), labels: labels)
        }
    }

    func testTrainSaveReloadGivesTheSameOutputs() throws {
        let base = try Base(path: fixtures.appendingPathComponent("tiny-bert.dynamo.onnx").path)
        XCTAssertEqual(try base.fingerprint().count, 32)
        var config = TrainConfig()
        config.loraRank = 4
        config.loraAlpha = 8
        config.loraTargets = ["query", "value"]
        config.learningRate = 5e-2
        config.seed = 3
        config.threads = 1
        let data = toyData(count: 4, seed: 1)
        let trainer = try Trainer(base: base, config: config)
        let before = try trainer.evaluate(data)
        var last: Trainer.StepReport?
        for _ in 0..<5 { for b in data { last = try trainer.step(b) } }
        let after = try trainer.evaluate(data)
        XCTAssertEqual(last?.steps, 20)
        XCTAssertLessThan(after.loss, before.loss * 0.9)

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swift-user.ktd").path
        let delta = try trainer.delta()
        try delta.save(path: path)
        let trained = try Session(base: base, delta: delta, threads: 1).run(data[0])[0]
        XCTAssertEqual(trained.name, "last_hidden_state")
        XCTAssertEqual(trained.shape, [8, 6, 32])

        let loaded = try Delta(base: base, path: path)
        XCTAssertEqual(try loaded.steps(), 20)
        let session = try Session(base: base, delta: loaded, threads: 1)
        XCTAssertEqual(try session.run(data[0])[0].data, trained.data)
        try session.setDelta(nil)
        XCTAssertNotEqual(try session.run(data[0])[0].data, trained.data)
        try? FileManager.default.removeItem(atPath: path)
    }

    func testFailuresCarryTheirStatus() throws {
        XCTAssertThrowsError(try Base(path: "/nonexistent/model.onnx")) { error in
            XCTAssertEqual((error as? KilotuneError)?.status, KilotuneError.io)
        }
        let base = try Base(path: fixtures.appendingPathComponent("tiny-bert.dynamo.onnx").path)
        var config = TrainConfig()
        config.loraRank = 0
        XCTAssertThrowsError(try Trainer(base: base, config: config)) { error in
            XCTAssertEqual((error as? KilotuneError)?.status, KilotuneError.config)
        }
    }
}
