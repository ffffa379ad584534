/* misuse: every way a C caller can hold the API wrong must return the documented status with a
 * message, and nothing may crash or leak (make test runs this under valgrind memcheck).
 *
 *   misuse LM_BUNDLE EMBED_BUNDLE CORRUPT_BUNDLE RAW_MODEL
 *
 * LM_BUNDLE: an LSTM or GPT-2 bundle with a tokenizer; EMBED_BUNDLE: a BERT bundle;
 * CORRUPT_BUNDLE: a copy of LM_BUNDLE whose model.onnx was overwritten at the start;
 * RAW_MODEL: models/tiny-lstm-lm/model.onnx (input_ids i64 [1,S], h0/c0 f32 [1,1,64]). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <ferrite.h>

static int failures = 0, checks = 0;

/* Checks a status and that a message came with every failure. */
static void expect(const char *what, ferrite_status got, ferrite_status want, const char *message) {
    checks++;
    int ok = got == want && (want == FERRITE_OK || (message && message[0] != 0));
    if (!ok) failures++;
    printf("%s %-60s %s%s%s\n", ok ? "ok  " : "FAIL", what, ferrite_status_name(got),
           ok ? "" : " (expected ", ok ? "" : ferrite_status_name(want));
    if (!ok) printf("     message: %s\n", message ? message : "(null)");
}

static void expect_true(const char *what, int cond) {
    checks++;
    if (!cond) failures++;
    printf("%s %s\n", cond ? "ok  " : "FAIL", what);
}

/* The call runs first: its message is read after it (C leaves argument order unspecified). */
#define EXPECT(call, want)                                                                         \
    do {                                                                                           \
        ferrite_status got_ = (call);                                                              \
        expect(#call, got_, (want), ferrite_last_error());                                         \
    } while (0)

static int calls = 0;
static int stop_at_once(const char *text, size_t len, void *user_data) {
    (void)text, (void)len, (void)user_data;
    calls++;
    return 1;
}

static void bundles(const char *lm, const char *embed, const char *corrupt) {
    ferrite_bundle *b = NULL;
    ferrite_open_params p = ferrite_open_default_params();

    EXPECT(ferrite_bundle_open(NULL, NULL, &b), FERRITE_ERR_INVALID_ARGUMENT);
    expect_true("a failed open leaves the handle NULL", b == NULL);
    EXPECT(ferrite_bundle_open(lm, NULL, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_bundle_open("/nonexistent/bundle", NULL, &b), FERRITE_ERR_IO);
    EXPECT(ferrite_bundle_open("bad-\xff\xfe-utf8", NULL, &b), FERRITE_ERR_INVALID_UTF8);
    p.struct_size = 0;
    EXPECT(ferrite_bundle_open(lm, &p, &b), FERRITE_ERR_INVALID_ARGUMENT);
    p = ferrite_open_default_params();
    p.backend = 7;
    EXPECT(ferrite_bundle_open(lm, &p, &b), FERRITE_ERR_INVALID_ARGUMENT);
    /* ONNX Runtime missing: an explicit library path that does not exist (or a library built
     * without the ort feature) is FERRITE_ERR_BACKEND_UNAVAILABLE. */
    p = ferrite_open_default_params();
    p.backend = FERRITE_BACKEND_ORT;
    p.ort_library = "/nonexistent/libonnxruntime.so";
    EXPECT(ferrite_bundle_open(lm, &p, &b), FERRITE_ERR_BACKEND_UNAVAILABLE);
    expect_true("the message names the backend", strstr(ferrite_last_error(), "ort") != NULL);
    EXPECT(ferrite_bundle_open(corrupt, NULL, &b), FERRITE_ERR_HASH_MISMATCH);
    p = ferrite_open_default_params();
    p.verify_hashes = 0;
    EXPECT(ferrite_bundle_open(corrupt, &p, &b), FERRITE_ERR_INVALID_MODEL);
    expect_true("still NULL after every failure", b == NULL);

    EXPECT(ferrite_bundle_open(lm, NULL, &b), FERRITE_OK);
    ferrite_bundle_info info = {.struct_size = 0};
    EXPECT(ferrite_bundle_get_info(b, &info), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_bundle_get_info(NULL, &info), FERRITE_ERR_INVALID_ARGUMENT);
    info.struct_size = sizeof info;
    EXPECT(ferrite_bundle_get_info(b, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_bundle_get_info(b, &info), FERRITE_OK);
    expect_true("an LM bundle is LSTM or GPT-2", info.architecture != FERRITE_ARCH_BERT);

    uint32_t ids[8];
    size_t len = 0;
    EXPECT(ferrite_bundle_tokenize(b, "ab", ids, 0, &len), FERRITE_ERR_BUFFER_TOO_SMALL);
    expect_true("tokenize reports the length it needs", len > 0);
    EXPECT(ferrite_bundle_tokenize(b, "ab", ids, 8, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_bundle_tokenize(b, "\xc3\x28", ids, 8, &len), FERRITE_ERR_INVALID_UTF8);

    ferrite_embedder *e = NULL;
    EXPECT(ferrite_embedder_create(b, &e), FERRITE_ERR_INVALID_GENERATION);
    EXPECT(ferrite_embedder_create(NULL, &e), FERRITE_ERR_INVALID_ARGUMENT);

    ferrite_generator *g = NULL;
    ferrite_sampling_params sp = ferrite_sampling_default_params();
    sp.top_p = 0.0f;
    EXPECT(ferrite_generator_create(b, &sp, &g), FERRITE_ERR_INVALID_GENERATION);
    EXPECT(ferrite_generator_create(NULL, NULL, &g), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_generator_create(b, NULL, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_generator_create(b, NULL, &g), FERRITE_OK);

    uint32_t token = 0;
    char piece[64];
    size_t piece_len = 0;
    EXPECT(ferrite_generator_next(g, &token, piece, sizeof piece, &piece_len), FERRITE_ERR_INVALID_GENERATION);
    expect("the generator keeps its own message", FERRITE_ERR_INVALID_GENERATION, FERRITE_ERR_INVALID_GENERATION,
           ferrite_generator_last_error(g));
    EXPECT(ferrite_generator_feed_text(g, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_generator_feed_text(g, "\xff"), FERRITE_ERR_INVALID_UTF8);
    EXPECT(ferrite_generator_feed_text(NULL, "ab"), FERRITE_ERR_INVALID_ARGUMENT);
    uint32_t huge[2] = {1, 4000000000u};
    EXPECT(ferrite_generator_feed_ids(g, huge, 2), FERRITE_ERR_UNKNOWN_TOKEN);
    EXPECT(ferrite_generator_feed_ids(g, NULL, 3), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_generator_feed_ids(g, huge, 0), FERRITE_ERR_INVALID_GENERATION);
    EXPECT(ferrite_generator_feed_text(g, "ab"), FERRITE_OK);
    EXPECT(ferrite_generator_next(g, NULL, piece, sizeof piece, &piece_len), FERRITE_ERR_INVALID_ARGUMENT);
    ferrite_status st = ferrite_generator_next(g, &token, piece, 1, &piece_len);
    const char *message = ferrite_last_error();
    if (piece_len > 0) {
        expect("next with a 1-byte piece buffer", st, FERRITE_ERR_BUFFER_TOO_SMALL, message);
        size_t needed = piece_len;
        uint32_t again = UINT32_MAX;
        EXPECT(ferrite_generator_next(g, &again, piece, sizeof piece, &piece_len), FERRITE_OK);
        expect_true("the retried call hands out the same piece", piece_len == needed && strlen(piece) == needed);
    } else {
        expect("next (empty piece fits)", st, FERRITE_OK, message);
    }
    EXPECT(ferrite_generator_next(g, &token, NULL, 0, NULL), FERRITE_OK);

    ferrite_generate_params gp = ferrite_generate_default_params();
    ferrite_generation r = {.struct_size = sizeof r};
    gp.max_tokens = 0;
    EXPECT(ferrite_generator_generate(g, "ab", &gp, NULL, NULL, &r), FERRITE_ERR_INVALID_GENERATION);
    gp = ferrite_generate_default_params();
    const char *stops[2] = {"zz", "\xfe"};
    gp.stop_strings = stops;
    gp.n_stop_strings = 2;
    EXPECT(ferrite_generator_generate(g, "ab", &gp, NULL, NULL, &r), FERRITE_ERR_INVALID_UTF8);
    const char *nine[9] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    gp.stop_strings = nine;
    gp.n_stop_strings = 9;
    EXPECT(ferrite_generator_generate(g, "ab", &gp, NULL, NULL, &r), FERRITE_ERR_INVALID_GENERATION);
    gp = ferrite_generate_default_params();
    gp.struct_size = 3;
    EXPECT(ferrite_generator_generate(g, "ab", &gp, NULL, NULL, &r), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_generator_generate(g, "", NULL, NULL, NULL, &r), FERRITE_ERR_INVALID_GENERATION);
    EXPECT(ferrite_generator_generate_ids(g, NULL, 0, NULL, NULL, NULL, &r), FERRITE_ERR_INVALID_GENERATION);
    ferrite_generation small = {.struct_size = 4};
    EXPECT(ferrite_generator_generate(g, "ab", NULL, NULL, NULL, &small), FERRITE_ERR_INVALID_ARGUMENT);
    gp = ferrite_generate_default_params();
    gp.max_tokens = 20;
    gp.stop_at_eos = 0;
    EXPECT(ferrite_generator_generate(g, "ab", &gp, stop_at_once, NULL, &r), FERRITE_OK);
    expect_true("a callback returning non-zero stops generation", calls == 1 && r.stop_reason == FERRITE_STOP_CALLBACK);
    EXPECT(ferrite_generator_generated_ids(g, ids, 0, &len), FERRITE_ERR_BUFFER_TOO_SMALL);
    expect_true("generated_ids reports the count", len == r.generated_tokens);
    EXPECT(ferrite_generator_generated_ids(g, ids, 8, &len), FERRITE_OK);
    EXPECT(ferrite_generator_next(g, &token, piece, sizeof piece, &piece_len), FERRITE_OK);
    EXPECT(ferrite_generator_reset(g), FERRITE_OK);
    EXPECT(ferrite_generator_reset(NULL), FERRITE_ERR_INVALID_ARGUMENT);

    /* A generator keeps its bundle alive: destroying the bundle first is allowed. */
    ferrite_bundle_destroy(&b);
    expect_true("destroy NULLs the bundle pointer", b == NULL);
    EXPECT(ferrite_generator_feed_text(g, "ab"), FERRITE_OK);
    EXPECT(ferrite_generator_next(g, &token, piece, sizeof piece, &piece_len), FERRITE_OK);
    ferrite_generator *other = (ferrite_generator *)&calls; /* not a handle: must be overwritten */
    EXPECT(ferrite_generator_create(b, NULL, &other), FERRITE_ERR_INVALID_ARGUMENT);
    expect_true("a failed create NULLs its out pointer", other == NULL);

    /* Destroyed handles: destroy NULLs the pointer, a second destroy is harmless, and using the
     * NULLed handle is an argument error. */
    ferrite_bundle_destroy(&b);
    ferrite_bundle_destroy(NULL);
    ferrite_generator_destroy(&g);
    expect_true("destroy NULLs the generator pointer", g == NULL);
    ferrite_generator_destroy(&g);
    ferrite_generator_destroy(NULL);
    EXPECT(ferrite_generator_next(g, &token, piece, sizeof piece, &piece_len), FERRITE_ERR_INVALID_ARGUMENT);
    expect_true("last_error of a NULL generator is a message", ferrite_generator_last_error(NULL)[0] != 0);

    /* Embeddings. */
    EXPECT(ferrite_bundle_open(embed, NULL, &b), FERRITE_OK);
    EXPECT(ferrite_generator_create(b, NULL, &g), FERRITE_ERR_INVALID_GENERATION);
    EXPECT(ferrite_embedder_create(b, &e), FERRITE_OK);
    size_t dim = 0;
    EXPECT(ferrite_embedder_dimension(e, &dim), FERRITE_OK);
    EXPECT(ferrite_embedder_dimension(e, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    const char *texts[2] = {"a cat", "a dog"};
    float out[2 * 1024];
    EXPECT(ferrite_embedder_embed(e, texts, 2, out, 1, &len), FERRITE_ERR_BUFFER_TOO_SMALL);
    expect_true("embed reports n_texts * dimension", len == 2 * dim && dim > 0);
    EXPECT(ferrite_embedder_embed(e, NULL, 2, out, 2048, &len), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_embedder_embed(e, texts, 2, out, 2048, NULL), FERRITE_ERR_INVALID_ARGUMENT);
    const char *bad[2] = {"ok", "\xed\xa0\x80"};
    EXPECT(ferrite_embedder_embed(e, bad, 2, out, 2048, &len), FERRITE_ERR_INVALID_UTF8);
    const char *with_null[2] = {"ok", NULL};
    EXPECT(ferrite_embedder_embed(e, with_null, 2, out, 2048, &len), FERRITE_ERR_INVALID_ARGUMENT);
    expect("the embedder keeps its own message", FERRITE_ERR_INVALID_ARGUMENT, FERRITE_ERR_INVALID_ARGUMENT,
           ferrite_embedder_last_error(e));
    EXPECT(ferrite_embedder_embed(e, texts, 0, NULL, 0, &len), FERRITE_OK);
    expect_true("0 texts is 0 floats", len == 0);
    EXPECT(ferrite_embedder_embed(e, texts, 2, out, 2048, &len), FERRITE_OK);
    ferrite_embedder_destroy(&e);
    ferrite_embedder_destroy(&e);
    EXPECT(ferrite_embedder_embed(e, texts, 2, out, 2048, &len), FERRITE_ERR_INVALID_ARGUMENT);
    ferrite_bundle_destroy(&b);
}

static void raw_model(const char *path, const char *not_onnx) {
    ferrite_model *m = NULL;
    ferrite_session *s = NULL;
    EXPECT(ferrite_model_open(not_onnx, NULL, &m), FERRITE_ERR_INVALID_MODEL);
    EXPECT(ferrite_model_open("/nonexistent.onnx", NULL, &m), FERRITE_ERR_IO);
    EXPECT(ferrite_model_open(path, NULL, &m), FERRITE_OK);
    size_t n_in = 0, n_out = 0;
    EXPECT(ferrite_model_io_count(m, &n_in, &n_out), FERRITE_OK);
    expect_true("3 inputs, 3 outputs", n_in == 3 && n_out == 3);
    ferrite_io_info io = {.struct_size = sizeof io};
    EXPECT(ferrite_model_io(m, 0, 0, &io), FERRITE_OK);
    expect_true("input 0 is input_ids, i64, [1, S]",
                strcmp(io.name, "input_ids") == 0 && io.dtype == FERRITE_DTYPE_I64 && io.rank == 2 &&
                    io.shape[0] == 1 && io.shape[1] == -1);
    EXPECT(ferrite_model_io(m, 1, 99, &io), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_session_create(m, &s), FERRITE_OK);
    ferrite_model_destroy(&m); /* the session keeps the model */

    int64_t ids[4] = {1, 2, 3, 4};
    float ids_f[4] = {1, 2, 3, 4};
    float h0[64] = {0}, c0[64] = {0};
    size_t ids_shape[2] = {1, 4}, state_shape[3] = {1, 1, 64}, wrong_state[3] = {1, 2, 32};
    ferrite_input in[3] = {
        {"input_ids", FERRITE_DTYPE_I64, ids_shape, 2, ids, sizeof ids},
        {"h0", FERRITE_DTYPE_F32, state_shape, 3, h0, sizeof h0},
        {"c0", FERRITE_DTYPE_F32, state_shape, 3, c0, sizeof c0},
    };
    static float logits[4 * 96];
    float hn[64];
    ferrite_output out[2] = {
        {.name = "logits", .dtype = FERRITE_DTYPE_F32, .data = logits, .byte_capacity = 16},
        {.name = "hN", .dtype = FERRITE_DTYPE_F32, .data = hn, .byte_capacity = sizeof hn},
    };
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_BUFFER_TOO_SMALL);
    expect_true("too small: the needed size and shape are reported",
                out[0].byte_size == sizeof logits && out[0].rank == 3 && out[0].shape[1] == 4 && out[0].shape[2] == 96);
    out[0].byte_capacity = sizeof logits;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_OK);
    EXPECT(ferrite_session_run(NULL, in, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_session_run(s, NULL, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_session_run(s, in, 2, out, 2), FERRITE_ERR_INVALID_INPUT);
    in[0] = (ferrite_input){"input_ids", FERRITE_DTYPE_F32, ids_shape, 2, ids_f, sizeof ids_f};
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_DTYPE_MISMATCH);
    expect("the session keeps its own message", FERRITE_ERR_DTYPE_MISMATCH, FERRITE_ERR_DTYPE_MISMATCH,
           ferrite_session_last_error(s));
    in[0] = (ferrite_input){"input_ids", FERRITE_DTYPE_I64, ids_shape, 2, ids, sizeof ids};
    in[1].shape = wrong_state;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_SHAPE_MISMATCH);
    in[1].shape = state_shape;
    in[1].byte_size = 12;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    in[1].byte_size = sizeof h0;
    in[1].dtype = 42;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    in[1].dtype = FERRITE_DTYPE_F32;
    in[1].data = (const char *)h0 + 1;
    in[1].byte_size = sizeof h0;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    in[1].data = h0;
    in[2].name = "c\xff";
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_UTF8);
    in[2].name = "c0";
    out[1].dtype = FERRITE_DTYPE_I64;
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_DTYPE_MISMATCH);
    out[1].dtype = FERRITE_DTYPE_F32;
    out[1].name = "nope";
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_INPUT);
    out[1].name = "hN";
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_OK);
    ferrite_session_destroy(&s);
    ferrite_session_destroy(&s);
    EXPECT(ferrite_session_run(s, in, 3, out, 2), FERRITE_ERR_INVALID_ARGUMENT);
    EXPECT(ferrite_session_create(NULL, &s), FERRITE_ERR_INVALID_ARGUMENT);
    ferrite_model_destroy(&m);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: misuse LM_BUNDLE EMBED_BUNDLE CORRUPT_BUNDLE RAW_MODEL\n");
        return 2;
    }
    expect_true("ferrite_version is a string", ferrite_version() != NULL && ferrite_version()[0] != 0);
    expect_true("the library's ABI is the header's", ferrite_abi_version() == FERRITE_ABI_VERSION);
    expect_true("unknown status values have a name", strcmp(ferrite_status_name(999), "FERRITE_STATUS_UNKNOWN") == 0);
    bundles(argv[1], argv[2], argv[3]);
    char manifest[4096];
    snprintf(manifest, sizeof manifest, "%s/ferrite.json", argv[1]);
    raw_model(argv[4], manifest);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
