import Foundation
import KilotuneFFI

/// How a `Trainer` is set up. The defaults are `kt_train_config_default()`'s: LoRA r=8, alpha
/// 16 on "query" and "value", a two-class head with mean pooling, AdamW at 1e-3.
public struct TrainConfig {
    public enum Method: UInt32 { case lora = 0, bitfit = 1 }

    public var method: Method = .lora
    public var loraRank: UInt32 = 8
    public var loraAlpha: Float = 16
    /// Empty: the default targets ("query", "value").
    public var loraTargets: [String] = []
    public var classes: UInt32 = 2
    public var seed: UInt64 = 0
    /// Worker threads, 0 for one per core.
    public var threads: UInt32 = 0
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 0.01
    /// 0 disables clipping.
    public var maxGradNorm: Float = 1

    public init() {}

    /// The C configuration, with `loraTargets` alive only inside `body`.
    func withC<R>(_ body: (UnsafePointer<kt_train_config>) throws -> R) rethrows -> R {
        var c = kt_train_config_default()
        c.method = method.rawValue
        c.lora_rank = loraRank
        c.lora_alpha = loraAlpha
        c.classes = classes
        c.seed = seed
        c.threads = threads
        c.learning_rate = learningRate
        c.weight_decay = weightDecay
        c.max_grad_norm = maxGradNorm
        let strings = loraTargets.map { strdup($0) }
        defer { strings.forEach { free($0) } }
        let pointers: [UnsafePointer<CChar>?] = strings.map { UnsafePointer($0) }
        return try pointers.withUnsafeBufferPointer { targets in
            c.lora_targets = targets.isEmpty ? nil : targets.baseAddress
            c.lora_target_count = targets.count
            return try withUnsafePointer(to: &c) { try body($0) }
        }
    }
}
