-- Revision 0003: the guard of a write built from a run snapshot (SQLSTATE CL002); dropped
-- by revision 0004, when outcomes stopped being recorded from snapshots.
CREATE FUNCTION chainline_expect_current(ok boolean) RETURNS boolean AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'the run changed since its snapshot' USING ERRCODE = 'CL002';
    END IF;
    RETURN true;
END
$$ LANGUAGE plpgsql;
