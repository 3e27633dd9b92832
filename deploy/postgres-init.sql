-- Run once by the postgres image on an empty volume: MLflow's store beside the results DB.
CREATE DATABASE mlflow OWNER study;
