/* A small JSON reader and writer for the guest protocol (PROTOCOL.md).
 *
 * The reader parses one document into a tree allocated from a single arena,
 * freed at once with json_free. Inputs come from the host and are bounded
 * (1 MiB frames), but are still treated as untrusted: depth and size limits,
 * no recursion without bound. */
#ifndef HBD_JSON_H
#define HBD_JSON_H

#include <stddef.h>
#include <stdint.h>

enum json_type { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct json {
	enum json_type type;
	double num;
	int boolean;
	char *str;          /* J_STR: NUL-terminated (embedded NULs are rejected) */
	size_t len;         /* J_STR length; J_ARR/J_OBJ element count */
	struct json *child; /* first element / first member value */
	struct json *next;  /* next sibling */
	char *key;          /* member name when inside an object */
};

/* Parse `len` bytes; NULL on malformed input. Free with json_free(root). */
struct json *json_parse(const char *text, size_t len);
void json_free(struct json *root);

const struct json *json_get(const struct json *obj, const char *key);
const char *json_str(const struct json *obj, const char *key, const char *dflt);
long long json_int(const struct json *obj, const char *key, long long dflt);
int json_bool(const struct json *obj, const char *key, int dflt);

/* A growable output buffer with JSON helpers. */
struct buf {
	char *data;
	size_t len, cap;
};

void buf_add(struct buf *b, const void *data, size_t len);
void buf_str(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_json_string(struct buf *b, const char *s);
void buf_free(struct buf *b);

#endif
