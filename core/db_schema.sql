-- loyd store schema; replaced by the store module.
SELECT 1;
