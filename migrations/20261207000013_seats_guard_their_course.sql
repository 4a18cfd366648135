-- A seat's course is guarded where a course can go, not at every seat taken. The foreign key
-- from enrollments to courses checked the course of every inserted seat: a row lookup and a
-- row lock per seat, from a trigger, inside the group commit that had just locked and updated
-- that very course (on a burst of 10,000 requests, 440-505 ms of the commit's database time with
-- it against 340-395 ms without, alternating three times). The commit only inserts seats into
-- courses it holds locked (`apply_course_effects` joins the effects to them), and nothing in
-- seatrush deletes a course or changes its id; what the key still guarded is an operator's
-- DELETE or UPDATE by hand, which this trigger refuses as the key did. The audit's
-- `seat_without_course` check finds a seat whose course is gone anyway.
ALTER TABLE enrollments DROP CONSTRAINT enrollments_course_id_fkey;

CREATE FUNCTION courses_keep_their_seats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.course_id IS DISTINCT FROM OLD.course_id)
       AND EXISTS (SELECT 1 FROM enrollments WHERE course_id = OLD.course_id) THEN
        RAISE EXCEPTION 'course % still has students in its seats', OLD.course_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

CREATE TRIGGER courses_keep_their_seats
    BEFORE DELETE OR UPDATE OF course_id ON courses
    FOR EACH ROW EXECUTE FUNCTION courses_keep_their_seats();
