from libs.common.bus import run_service
from services.intake.app import create_service
from services.intake.settings import IntakeSettings

settings = IntakeSettings()
run_service(lambda: create_service(settings), settings)
