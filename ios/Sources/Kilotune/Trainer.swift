import KilotuneFFI

/// Trains one user's delta on a base. Not for concurrent use: one call at a time (give each
/// thread its own trainer; they may share one base).
public final class Trainer {
    public struct StepReport { public let loss: Float; public let applied: Bool; public let steps: UInt64 }
    public struct Evaluation { public let accuracy: Float; public let loss: Float; public let rows: UInt64 }

    let handle: OpaquePointer
    /// Keeps the Swift object alive as long as the trainer, as the C trainer keeps the model.
    public let base: Base

    public init(base: Base, config: TrainConfig = TrainConfig()) throws {
        var out: OpaquePointer?
        try config.withC { c in try check(kt_trainer_new(base.handle, c, &out)) }
        handle = out!
        self.base = base
    }

    /// One optimization step on a labelled batch.
    public func step(_ batch: Batch) throws -> StepReport {
        var r = kt_step_report()
        try batch.withBatch { b in
            var b = b
            try check(kt_trainer_step(handle, &b, &r))
        }
        return StepReport(loss: r.loss, applied: r.applied != 0, steps: r.steps)
    }

    /// Accuracy and loss over labelled batches, without training.
    public func evaluate(_ batches: [Batch]) throws -> Evaluation {
        var e = kt_evaluation()
        try withBatches(batches[...], []) { cs in
            try cs.withUnsafeBufferPointer { try check(kt_trainer_evaluate(handle, $0.baseAddress, $0.count, &e)) }
        }
        return Evaluation(accuracy: e.accuracy, loss: e.loss, rows: e.rows)
    }

    /// A snapshot of the delta trained so far.
    public func delta() throws -> Delta {
        var out: OpaquePointer?
        try check(kt_trainer_delta(handle, &out))
        return Delta(handle: out!)
    }

    deinit { kt_trainer_free(handle) }
}

/// Nests each batch's pointer scope, then calls `body` with all the C batches at once.
private func withBatches(_ rest: ArraySlice<Batch>, _ done: [kt_batch], _ body: ([kt_batch]) throws -> Void) throws {
    guard let first = rest.first else { return try body(done) }
    try first.withBatch { b in try withBatches(rest.dropFirst(), done + [b], body) }
}
