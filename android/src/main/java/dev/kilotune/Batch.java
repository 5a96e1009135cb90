package dev.kilotune;

import java.util.Objects;

/**
 * Tokenized rows as plain arrays, row-major, {@code rows * seqLen} values each, with one class
 * label per row for training (labels may be null for {@link Session#run}).
 */
public final class Batch {
    final int rows;
    final int seqLen;
    final long[] inputIds;
    final long[] attentionMask;
    final long[] tokenTypeIds;
    final int[] labels;

    /**
     * @param tokenTypeIds segment ids for models that take them, or null for zeros
     * @param labels one class per row, or null when the batch is only run
     */
    public Batch(int rows, int seqLen, long[] inputIds, long[] attentionMask, long[] tokenTypeIds, int[] labels) {
        this.rows = rows;
        this.seqLen = seqLen;
        this.inputIds = Objects.requireNonNull(inputIds, "inputIds");
        this.attentionMask = Objects.requireNonNull(attentionMask, "attentionMask");
        this.tokenTypeIds = tokenTypeIds;
        this.labels = labels;
    }

    int[] labels() {
        return Objects.requireNonNull(labels, "this batch has no labels");
    }
}
