package dev.kilotune;

/**
 * How a {@link Trainer} is set up; the defaults are those of {@code kt_train_config_default()}:
 * LoRA r=8, alpha 16 on "query" and "value", a two-class head with mean pooling, AdamW at 1e-3
 * with weight decay 0.01, clipping at 1.0, seed 0, one thread per core.
 */
public final class TrainConfig {
    /** PEFT methods. */
    public enum Method { LORA, BITFIT }

    /** Optimizers. */
    public enum Optimizer { ADAMW, SGD }

    /** Learning-rate decay after warm-up. */
    public enum Decay { CONSTANT, LINEAR, COSINE }

    Method method = Method.LORA;
    int loraRank = 8;
    float loraAlpha = 16f;
    String[] loraTargets = new String[0];
    boolean bitfitQueryAndMlpOnly = false;
    boolean bitfitLayerNorm = true;
    int classes = 2;
    boolean clsPooling = false;
    long seed = 0;
    int threads = 0;
    Optimizer optimizer = Optimizer.ADAMW;
    float learningRate = 1e-3f;
    float weightDecay = 0.01f;
    float momentum = 0f;
    long warmupSteps = 0;
    long totalSteps = 0;
    Decay decay = Decay.CONSTANT;
    float maxGradNorm = 1f;

    /** LoRA of rank {@code rank} and scale {@code alpha / rank} on {@code targets} (none: query, value). */
    public TrainConfig lora(int rank, float alpha, String... targets) {
        method = Method.LORA;
        loraRank = rank;
        loraAlpha = alpha;
        loraTargets = targets.clone();
        return this;
    }

    /** BitFit: all Linear biases, or only the query and MLP-middle ones; LayerNorm biases optionally. */
    public TrainConfig bitfit(boolean queryAndMlpOnly, boolean layerNorm) {
        method = Method.BITFIT;
        bitfitQueryAndMlpOnly = queryAndMlpOnly;
        bitfitLayerNorm = layerNorm;
        return this;
    }

    /** A classification head over {@code classes} classes, mean-pooled or on the first token. */
    public TrainConfig classes(int classes, boolean clsPooling) {
        this.classes = classes;
        this.clsPooling = clsPooling;
        return this;
    }

    /** The initialization seed: the same seed, data and threads repeat a run bit for bit. */
    public TrainConfig seed(long seed) {
        this.seed = seed;
        return this;
    }

    /** Worker threads (0: one per core). */
    public TrainConfig threads(int threads) {
        this.threads = threads;
        return this;
    }

    /** The optimizer, its learning rate and weight decay (and momentum, for SGD). */
    public TrainConfig optimizer(Optimizer optimizer, float learningRate, float weightDecay, float momentum) {
        this.optimizer = optimizer;
        this.learningRate = learningRate;
        this.weightDecay = weightDecay;
        this.momentum = momentum;
        return this;
    }

    /** The base learning rate. */
    public TrainConfig learningRate(float learningRate) {
        this.learningRate = learningRate;
        return this;
    }

    /** Warm-up steps, then {@code decay} to 0 at {@code totalSteps}. */
    public TrainConfig schedule(long warmupSteps, long totalSteps, Decay decay) {
        this.warmupSteps = warmupSteps;
        this.totalSteps = totalSteps;
        this.decay = decay;
        return this;
    }

    /** Clip gradients to this global norm; 0 disables clipping. */
    public TrainConfig maxGradNorm(float maxGradNorm) {
        this.maxGradNorm = maxGradNorm;
        return this;
    }
}
