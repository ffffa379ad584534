/* embed: sentence embeddings through the ferrite C API, printed as `ferrite embed --json` does
 * ({"embeddings":[[...],...]}), so `make test` can compare the two.
 *
 *   embed BUNDLE TEXT [TEXT...] [--backend tract|ort]
 *
 * The buffer is sized by asking first (FERRITE_ERR_BUFFER_TOO_SMALL reports the length). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ferrite.h>

static int fail(const char *what, ferrite_status st) {
    fprintf(stderr, "embed: %s: %s: %s\n", what, ferrite_status_name(st), ferrite_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *bundle_dir = NULL, *backend = "tract";
    const char **texts = calloc((size_t)argc, sizeof *texts);
    size_t n_texts = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!bundle_dir) bundle_dir = argv[i];
        else texts[n_texts++] = argv[i];
    }
    if (!bundle_dir || n_texts == 0) {
        fprintf(stderr, "usage: embed BUNDLE TEXT [TEXT...] [--backend tract|ort]\n");
        free(texts);
        return 2;
    }
    ferrite_open_params params = ferrite_open_default_params();
    params.backend = strcmp(backend, "ort") == 0 ? FERRITE_BACKEND_ORT : FERRITE_BACKEND_TRACT;
    ferrite_bundle *bundle = NULL;
    ferrite_embedder *emb = NULL;
    float *out = NULL;
    size_t len = 0, dim = 0;
    int rc = 0;
    ferrite_status st = ferrite_bundle_open(bundle_dir, &params, &bundle);
    if (st == FERRITE_OK) st = ferrite_embedder_create(bundle, &emb);
    if (st == FERRITE_OK) st = ferrite_embedder_dimension(emb, &dim);
    if (st == FERRITE_OK) {
        st = ferrite_embedder_embed(emb, texts, n_texts, NULL, 0, &len);
        if (st == FERRITE_ERR_BUFFER_TOO_SMALL) {
            out = malloc(len * sizeof *out);
            st = ferrite_embedder_embed(emb, texts, n_texts, out, len, &len);
        }
    }
    if (st != FERRITE_OK) {
        rc = fail("embed", st);
    } else {
        size_t d = len / n_texts;
        printf("{\"embeddings\":[");
        for (size_t r = 0; r < n_texts; r++) {
            printf(r ? ",[" : "[");
            for (size_t j = 0; j < d; j++) printf(j ? ",%.9g" : "%.9g", (double)out[r * d + j]);
            printf("]");
        }
        printf("]}\n");
        if (dim != 0 && dim != d) rc = fail("dimension differs from the output", FERRITE_ERR_INTERNAL);
    }
    free(out);
    free(texts);
    ferrite_embedder_destroy(&emb);
    ferrite_bundle_destroy(&bundle);
    return rc;
}
