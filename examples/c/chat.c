/* chat: one chat turn through the ferrite C API. Renders a conversation with the bundle's chat
 * template into a buffer sized by a first call, feeds it, and pulls tokens until one of the
 * template's end-of-turn ids. Prints what `ferrite generate BUNDLE --chat MESSAGE --json` prints
 * (without the timing fields), so `make test` can compare the two.
 *
 *   chat BUNDLE --message TEXT [--system TEXT] [--max-tokens N] [--show-prompt]
 *
 * --show-prompt prints the rendered prompt instead and exits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ferrite.h>

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
    fprintf(stderr, "chat: %s: %s: %s\n", what, ferrite_status_name(st), ferrite_last_error());
    return 1;
}

/* Renders the conversation into a new malloc'd string: one call for the size, one to fill. */
static ferrite_status render(const ferrite_bundle *bundle, const ferrite_chat_message *messages,
                             size_t n, char **out) {
    size_t len = 0;
    *out = NULL;
    ferrite_status st = ferrite_chat_render(bundle, messages, n, 1, NULL, 0, &len);
    if (st != FERRITE_ERR_BUFFER_TOO_SMALL) return st == FERRITE_OK ? FERRITE_ERR_INTERNAL : st;
    char *buf = malloc(len + 1);
    if (!buf) return FERRITE_ERR_RESOURCE_LIMIT;
    st = ferrite_chat_render(bundle, messages, n, 1, buf, len + 1, &len);
    if (st != FERRITE_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    return FERRITE_OK;
}

int main(int argc, char **argv) {
    const char *bundle_dir = NULL, *message = NULL, *system = NULL;
    unsigned max_tokens = 64;
    int show_prompt = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--message") && i + 1 < argc) message = argv[++i];
        else if (!strcmp(argv[i], "--system") && i + 1 < argc) system = argv[++i];
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) max_tokens = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--show-prompt")) show_prompt = 1;
        else if (!bundle_dir) bundle_dir = argv[i];
        else bundle_dir = NULL, i = argc;
    }
    if (!bundle_dir || !message || max_tokens == 0) {
        fprintf(stderr, "usage: chat BUNDLE --message TEXT [--system TEXT] [--max-tokens N] [--show-prompt]\n");
        return 2;
    }

    ferrite_bundle *bundle = NULL;
    ferrite_status st = ferrite_bundle_open(bundle_dir, NULL, &bundle);
    if (st != FERRITE_OK) return fail("open", st);

    ferrite_chat_message messages[2];
    size_t n = 0;
    if (system) messages[n++] = (ferrite_chat_message){.role = "system", .content = system};
    messages[n++] = (ferrite_chat_message){.role = "user", .content = message};
    char *prompt = NULL;
    st = render(bundle, messages, n, &prompt);
    if (st != FERRITE_OK) {
        ferrite_bundle_destroy(&bundle);
        return fail("render", st);
    }
    if (show_prompt) {
        fputs(prompt, stdout);
        free(prompt);
        ferrite_bundle_destroy(&bundle);
        return 0;
    }

    uint32_t stop[8];
    size_t n_stop = 0;
    st = ferrite_chat_stop_ids(bundle, stop, 8, &n_stop);
    uint32_t *prompt_ids = NULL;
    size_t n_prompt = 0;
    if (st == FERRITE_OK) {
        /* The size first, as for the prompt text. */
        st = ferrite_bundle_tokenize(bundle, prompt, NULL, 0, &n_prompt);
        if (st == FERRITE_ERR_BUFFER_TOO_SMALL || st == FERRITE_OK) {
            prompt_ids = malloc((n_prompt ? n_prompt : 1) * sizeof *prompt_ids);
            st = prompt_ids ? ferrite_bundle_tokenize(bundle, prompt, prompt_ids, n_prompt, &n_prompt)
                            : FERRITE_ERR_RESOURCE_LIMIT;
        }
    }
    free(prompt);
    ferrite_generator *gen = NULL;
    if (st == FERRITE_OK) st = ferrite_generator_create(bundle, NULL, &gen);
    if (st == FERRITE_OK) st = ferrite_generator_feed_ids(gen, prompt_ids, n_prompt);
    int rc = st == FERRITE_OK ? 0 : fail("prepare", st);

    uint32_t *ids = calloc(max_tokens, sizeof *ids);
    char *text = calloc(1, 1);
    size_t n_ids = 0, text_len = 0;
    while (rc == 0 && ids && text && n_ids < max_tokens) {
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
        int end_of_turn = 0;
        for (size_t i = 0; i < n_stop; i++) end_of_turn |= id == stop[i];
        if (end_of_turn) break;
        char *grown = realloc(text, text_len + piece_len + 1);
        if (!grown) {
            rc = fail("next", FERRITE_ERR_RESOURCE_LIMIT);
            break;
        }
        text = grown;
        memcpy(text + text_len, piece, piece_len);
        text_len += piece_len;
    }
    if (rc == 0) {
        printf("{\"generated_tokens\":%zu,\"ids\":[", n_ids);
        for (size_t i = 0; i < n_ids; i++) printf(i ? ",%u" : "%u", ids[i]);
        printf("],\"prompt_tokens\":%zu,\"text\":", n_prompt);
        print_json_string(text, text_len);
        printf("}\n");
    }
    free(ids);
    free(text);
    free(prompt_ids);
    ferrite_generator_destroy(&gen);
    ferrite_bundle_destroy(&bundle);
    return rc;
}
