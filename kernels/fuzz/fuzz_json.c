/* libFuzzer harness for the guest init's JSON reader (kernels/init/json.c)
 * and the helpers the init applies to what it reads from the host: the
 * typed accessors, base64_decode (util.c) and the writer, whose output must
 * read back as the same string. Build and run: kernels/fuzz/run.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "util.h"

/* Keys the init looks up (PROTOCOL.md), so that accessors meet real names. */
static const char *const keys[] = {"op", "id", "args", "env", "cwd", "user", "tty", "builtin",
				   "files", "data", "path", "mode", "uid", "gid", "rootfs",
				   "mounts", "signal", "width", "height", "memory", ""};

static void visit(const struct json *v, int depth)
{
	if (depth > 64)
		__builtin_trap(); /* the reader bounds nesting at 32 */
	size_t n = 0;
	for (const struct json *c = v->child; c; c = c->next) {
		n++;
		if (v->type == J_OBJ && !c->key)
			__builtin_trap(); /* every member has its name */
		visit(c, depth + 1);
	}
	if ((v->type == J_ARR || v->type == J_OBJ) && n != v->len)
		__builtin_trap();
	if (v->type == J_STR) {
		if (strlen(v->str) != v->len)
			__builtin_trap(); /* embedded NULs are refused */
		size_t len;
		unsigned char *bytes = base64_decode(v->str, &len);
		free(bytes);
		/* The writer's escaping reads back as the same string. */
		struct buf b = {0};
		buf_json_string(&b, v->str);
		struct json *again = json_parse(b.data, b.len);
		if (!again || again->type != J_STR || strcmp(again->str, v->str))
			__builtin_trap();
		json_free(again);
		buf_free(&b);
	}
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		(void)json_get(v, keys[i]);
		(void)json_str(v, keys[i], "");
		(void)json_int(v, keys[i], -1);
		(void)json_bool(v, keys[i], 0);
	}
	if (v->key) {
		(void)json_str(v, v->key, NULL);
		(void)json_int(v, v->key, 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json *root = json_parse((const char *)data, size);
	if (!root)
		return 0;
	visit(root, 0);
	/* Members of the top object as the init reads them (by name). */
	for (const struct json *m = root->child; m && root->type == J_OBJ; m = m->next)
		if (json_get(root, m->key) == NULL)
			__builtin_trap();
	json_free(root);
	return 0;
}
