-- `tvaers verify NOTICE_ID` finds received notices by id alone (the unique
-- key starts with the sender).
CREATE INDEX inbox_by_notice ON inbox (notice_id);
