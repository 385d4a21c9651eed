-- Revision 0002: a guard that fails the statement it is part of (SQLSTATE CL001).
CREATE FUNCTION chainline_require(ok boolean, message text) RETURNS boolean AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'CL001';
    END IF;
    RETURN true;
END
$$ LANGUAGE plpgsql;
