/* generate: text generation through the ferrite C API, printing what `ferrite generate --json`
 * prints (without the timing fields), so `make test` can compare the two.
 *
 *   generate BUNDLE (--prompt TEXT | --ids 1,2,3) [--max-tokens N] [--step] [--backend tract|ort]
 *
 * By default it uses ferrite_generator_generate with a streaming callback; --step feeds the
 * prompt and pulls tokens one by one with ferrite_generator_next instead (same output). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ferrite.h>

typedef struct {
    char *data;
    size_t len, cap;
} text_buf;

static int append(text_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->data, cap);
        if (!p) return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

static int on_text(const char *text, size_t len, void *user_data) {
    return append((text_buf *)user_data, text, len) == 0 ? 0 : 1;
}

/* JSON string escaping as serde_json does it: \" \\ \b \f \n \r \t, \u00XX for other controls,
 * everything else (UTF-8 included) as is. */
static void print_json_string(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\b': fputs("\\b", stdout); break;
        case '\f': fputs("\\f", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (c < 0x20) printf("\\u%04x", c);
            else putchar(c);
        }
    }
    putchar('"');
}

static int fail(const char *what, ferrite_status st) {
    fprintf(stderr, "generate: %s: %s: %s\n", what, ferrite_status_name(st), ferrite_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *bundle_dir = NULL, *prompt = NULL, *ids_arg = NULL, *backend = "tract";
    unsigned max_tokens = 64;
    int step = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = argv[++i];
        else if (!strcmp(argv[i], "--ids") && i + 1 < argc) ids_arg = argv[++i];
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) max_tokens = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--step")) step = 1;
        else if (!bundle_dir) bundle_dir = argv[i];
        else bundle_dir = NULL, i = argc;
    }
    if (!bundle_dir || (!prompt == !ids_arg)) {
        fprintf(stderr, "usage: generate BUNDLE (--prompt TEXT | --ids 1,2,3) [--max-tokens N] [--step] [--backend tract|ort]\n");
        return 2;
    }
    uint32_t prompt_ids[1024];
    size_t n_prompt = 0;
    if (ids_arg) {
        for (const char *p = ids_arg; *p && n_prompt < 1024;) {
            char *end;
            prompt_ids[n_prompt++] = (uint32_t)strtoul(p, &end, 10);
            p = *end == ',' ? end + 1 : end;
            if (end == p && *p) break;
        }
    }

    ferrite_open_params params = ferrite_open_default_params();
    params.backend = strcmp(backend, "ort") == 0 ? FERRITE_BACKEND_ORT : FERRITE_BACKEND_TRACT;
    ferrite_bundle *bundle = NULL;
    ferrite_generator *gen = NULL;
    ferrite_status st = ferrite_bundle_open(bundle_dir, &params, &bundle);
    if (st != FERRITE_OK) return fail("open", st);
    st = ferrite_generator_create(bundle, NULL, &gen);
    if (st != FERRITE_OK) {
        ferrite_bundle_destroy(&bundle);
        return fail("create", st);
    }

    text_buf text = {0};
    append(&text, "", 0);
    uint32_t *ids = calloc(max_tokens ? max_tokens : 1, sizeof *ids);
    size_t n_ids = 0, prompt_tokens = n_prompt;
    int rc = 0;
    if (!step) {
        ferrite_generate_params gp = ferrite_generate_default_params();
        gp.max_tokens = max_tokens;
        ferrite_generation result = {.struct_size = sizeof result};
        st = prompt ? ferrite_generator_generate(gen, prompt, &gp, on_text, &text, &result)
                    : ferrite_generator_generate_ids(gen, prompt_ids, n_prompt, &gp, on_text, &text, &result);
        if (st == FERRITE_OK) st = ferrite_generator_generated_ids(gen, ids, max_tokens, &n_ids);
        prompt_tokens = result.prompt_tokens;
        if (st != FERRITE_OK) rc = fail("generate", st);
    } else {
        ferrite_bundle_info info = {.struct_size = sizeof info};
        st = ferrite_bundle_get_info(bundle, &info);
        /* Text prompts go through the bundle's tokenizer here, to count the prompt's tokens. */
        if (st == FERRITE_OK && prompt)
            st = ferrite_bundle_tokenize(bundle, prompt, prompt_ids, 1024, &n_prompt);
        prompt_tokens = n_prompt;
        if (st == FERRITE_OK) st = ferrite_generator_feed_ids(gen, prompt_ids, n_prompt);
        if (st != FERRITE_OK) rc = fail("feed", st);
        while (rc == 0 && n_ids < max_tokens) {
            uint32_t id;
            char piece[256];
            size_t piece_len = 0;
            st = ferrite_generator_next(gen, &id, piece, sizeof piece, &piece_len);
            if (st == FERRITE_ERR_CONTEXT_FULL) break;
            if (st != FERRITE_OK) {
                rc = fail("next", st);
                break;
            }
            ids[n_ids++] = id;
            if (info.eos_id >= 0 && (int64_t)id == info.eos_id) break;
            append(&text, piece, piece_len);
        }
    }
    if (rc == 0) {
        printf("{\"generated_tokens\":%zu,\"ids\":[", n_ids);
        for (size_t i = 0; i < n_ids; i++) printf(i ? ",%u" : "%u", ids[i]);
        printf("],\"prompt_tokens\":%zu,\"text\":", prompt_tokens);
        print_json_string(text.data, text.len);
        printf("}\n");
    }
    free(ids);
    free(text.data);
    ferrite_generator_destroy(&gen);
    ferrite_bundle_destroy(&bundle);
    return rc;
}
